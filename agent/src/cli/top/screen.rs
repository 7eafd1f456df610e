//! The live view of `weft top`: the terminal in raw mode on its alternate
//! screen, the table redrawn in place at each refresh and on resize; `q`,
//! Esc or Ctrl-C quits, and the terminal is restored however the view
//! ends (a guard, also on errors and panics).

use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, queue, terminal};
use tokio::sync::mpsc;

use super::{Source, TopArgs, arrange, heading, table};

/// Lines above the table: the heading and a blank line.
const HEADING_LINES: u16 = 2;

/// What the input thread reports.
enum Input {
    Quit,
    Redraw,
}

pub async fn run(args: &TopArgs, source: &mut Source<'_>) -> anyhow::Result<ExitCode> {
    // The first snapshot before the screen changes: an agent that refuses
    // the request, or is not there, is reported on the normal screen.
    let mut snapshot = match source.snapshot().await? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let _terminal = Terminal::enter()?;
    let (tx, mut rx) = mpsc::channel(8);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || read_keys(&tx, &stop))
    };
    let drawn: anyhow::Result<ExitCode> = async {
        let mut next = tokio::time::Instant::now() + args.refresh;
        loop {
            draw(args, &snapshot)?;
            tokio::select! {
                () = tokio::time::sleep_until(next) => {
                    next += args.refresh;
                    snapshot = match source.snapshot().await? {
                        Ok(s) => s,
                        Err(code) => return Ok(code),
                    };
                }
                input = rx.recv() => match input {
                    Some(Input::Redraw) => {}
                    Some(Input::Quit) | None => return Ok(ExitCode::SUCCESS),
                },
            }
        }
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    drawn
}

/// Draws one frame: the heading and as many rows as the screen holds,
/// each line cut to the screen's width.
fn draw(args: &TopArgs, snapshot: &super::TopSnapshot) -> io::Result<()> {
    let (columns, lines) = terminal::size().unwrap_or((80, 24));
    let fits = u64::from(lines.saturating_sub(HEADING_LINES + 1).max(1));
    let top = Some(args.top.map_or(fits, |n| n.min(fits)));
    let shown = arrange(snapshot.clone(), args.sort, top);
    let mut text = heading(&shown, args.sort, SystemTime::now());
    text.push_str("  (q quits)\n\n");
    text.push_str(&table(&shown));
    let mut out = io::stdout().lock();
    queue!(
        out,
        cursor::MoveTo(0, 0),
        terminal::Clear(terminal::ClearType::All)
    )?;
    for line in text.lines() {
        let cut: String = line.chars().take(usize::from(columns)).collect();
        // Raw mode: a line feed does not return the carriage.
        write!(out, "{cut}\r\n")?;
    }
    out.flush()
}

/// Reads key and resize events until told to stop (polling, so that it
/// notices), sending what matters to the view.
fn read_keys(tx: &mpsc::Sender<Input>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match event::poll(Duration::from_millis(100)) {
            Ok(false) => continue,
            Ok(true) => {}
            // No terminal to read from any more: nothing can quit the view
            // but a signal, so end it.
            Err(_) => {
                let _ = tx.blocking_send(Input::Quit);
                return;
            }
        }
        let input = match event::read() {
            Ok(Event::Key(key)) if quits(&key) => Input::Quit,
            Ok(Event::Resize(..)) => Input::Redraw,
            Ok(_) => continue,
            Err(_) => Input::Quit,
        };
        let quit = matches!(input, Input::Quit);
        if tx.blocking_send(input).is_err() || quit {
            return;
        }
    }
}

fn quits(key: &KeyEvent) -> bool {
    key.kind != KeyEventKind::Release
        && match key.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// The terminal in raw mode on the alternate screen, cursor hidden, until
/// dropped.
struct Terminal;

impl Terminal {
    fn enter() -> io::Result<Self> {
        terminal::enable_raw_mode()?;
        let guard = Terminal;
        let mut out = io::stdout();
        queue!(out, terminal::EnterAlternateScreen, cursor::Hide)?;
        out.flush()?;
        Ok(guard)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let mut out = io::stdout();
        let _ = queue!(out, cursor::Show, terminal::LeaveAlternateScreen);
        let _ = out.flush();
        let _ = terminal::disable_raw_mode();
    }
}
