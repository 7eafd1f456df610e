//! `weft flows -f` as a test sees it: started before the traffic, it gets
//! every matching record as it is written. The agent's store of recent
//! records is a bounded ring shared with the whole node's traffic: on a
//! busy node (a benchmark next door) a test's records may be evicted before
//! a later `weft flows --all` reads them; a follower filtered by the test's
//! port does not depend on that.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::agent::{Agent, weft_bin};

pub struct Follower {
    child: Option<Child>,
    records: Arc<Mutex<Vec<Value>>>,
    /// Lines that were not records (lag notices, errors).
    other: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Follower {
    /// Starts `weft flows -f --all -o jsonl FILTERS` against `agent`. The
    /// agent hands a follower the stored matching records and subscribes it
    /// to new ones in one step, so nothing written since the agent started
    /// is missed, however late the follower connects (as long as the store
    /// has not evicted it: start the follower before the traffic).
    pub fn start(agent: &Agent, filters: &[&str]) -> Self {
        let mut child = Command::new(weft_bin())
            .args(["flows", "-f", "--all", "-o", "jsonl", "--api-socket"])
            .arg(&agent.socket)
            .args(filters)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start weft flows -f");
        let records = Arc::new(Mutex::new(Vec::new()));
        let other = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (r, o) = (records.clone(), other.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => r.lock().expect("records").push(v),
                    Err(_) => o.lock().expect("other").push(line),
                }
            }
        });
        let o = other.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                o.lock().expect("other").push(line);
            }
        });
        Self {
            child: Some(child),
            records,
            other,
            reader: Some(reader),
        }
    }

    /// Panics if the follower has exited (agent gone, bad filter).
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "weft flows -f exited ({status}): {:?}",
                self.other.lock().expect("other")
            );
        }
    }

    /// The records so far.
    pub fn records(&self) -> Vec<Value> {
        self.records.lock().expect("records").clone()
    }

    /// Anything the follower printed that was not a record (e.g. that it
    /// fell behind and skipped records).
    pub fn notices(&self) -> Vec<String> {
        self.other.lock().expect("other").clone()
    }

    /// Waits until `done` holds for the records, or `timeout` passes;
    /// returns the records either way, so that the test's assertions show
    /// what was (not) seen.
    pub fn wait(&self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records();
            if done(&records) || Instant::now() >= deadline {
                return records;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Both sides' L7 records of a test's exchange, `[egress, ingress]`,
    /// each sorted by time, once `ready` holds (typically: the clients'
    /// connections closed, after which nothing more arrives for them) and
    /// each side has `total` records. Asserts that the follower skipped
    /// nothing and that each side has exactly `total`.
    pub fn l7_both_sides(
        &self,
        timeout: Duration,
        total: usize,
        ready: impl Fn(&[Value]) -> bool,
    ) -> [Vec<Value>; 2] {
        let records = self.wait(timeout, |records| {
            ready(records)
                && l7(records, "egress").len() >= total
                && l7(records, "ingress").len() >= total
        });
        assert!(self.notices().is_empty(), "{:?}", self.notices());
        ["egress", "ingress"].map(|direction| {
            let side = l7(&records, direction);
            assert_eq!(side.len(), total, "{direction}: {side:#?}");
            side
        })
    }
}

/// The L7 records seen from one side (`egress`: the client's socket,
/// `ingress`: the server's), sorted by time.
pub fn l7(records: &[Value], direction: &str) -> Vec<Value> {
    let mut side: Vec<Value> = records
        .iter()
        .filter(|r| r["type"] == "l7" && r["traffic_direction"] == direction)
        .cloned()
        .collect();
    side.sort_by_key(|r| r["time"].as_str().unwrap_or_default().to_owned());
    side
}

/// How many L4 `close` records name one of `clients` as their source
/// process.
pub fn closes_by(records: &[Value], clients: &[&str]) -> usize {
    records
        .iter()
        .filter(|r| r["type"] == "l4" && r["event"] == "close")
        .filter(|r| {
            r["source"]["process"]
                .as_str()
                .is_some_and(|p| clients.contains(&p))
        })
        .count()
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
