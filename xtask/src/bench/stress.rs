//! The event-rate stress: raise the request rate step by step until weft
//! loses events, the machine saturates, or the step or time budget ends.
//! Two series: keep-alive requests (events per request once L7 is on) and a
//! new connection per request (several L4 events per request).

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use super::load::{Load, round};
use super::phases::{Config, Ctx, Point, Running};
use super::workloads::Shape;
use crate::cmd::say;

/// Below this share of the asked rate, the machine is saturated: more steps
/// would measure the machine, not weft.
const SATURATED: f64 = 0.9;

pub struct Series {
    pub name: &'static str,
    pub config: Config,
    pub steps: Vec<Point>,
    /// The highest rate delivered (not only asked) with no event lost.
    pub last_clean: Option<u32>,
    /// The first asked rate at which events were lost.
    pub knee: Option<u32>,
    /// The first asked rate the machine could not deliver.
    pub saturated: Option<u32>,
    pub stopped_because: String,
}

pub struct Budget {
    pub first_rate: u32,
    /// Each step multiplies the rate by this.
    pub factor: f64,
    pub max_steps: u32,
    pub seconds: u64,
    pub deadline: Instant,
}

/// One series on `config` (an agent configuration).
pub fn series(
    ctx: &Ctx,
    config: Config,
    name: &'static str,
    connection_per_request: bool,
    budget: &Budget,
) -> Result<Series> {
    let shape = Shape {
        connections: ctx.connections,
        connection_per_request,
    };
    let mut running = Running::start(ctx, config)?;
    running.warm_up(ctx, 1)?;
    let mut result = Series {
        name,
        config,
        steps: Vec::new(),
        last_clean: None,
        knee: None,
        saturated: None,
        stopped_because: format!("the step budget ({}) ended", budget.max_steps),
    };
    let mut rate = f64::from(budget.first_rate);
    for _ in 0..budget.max_steps {
        let step_time = Duration::from_secs(budget.seconds) + ctx.settle * 2;
        if Instant::now() + step_time > budget.deadline {
            result.stopped_because = "the time budget ended".into();
            break;
        }
        let target = (rate / 100.0).round() as u32 * 100;
        let Some(point) = running.measure(ctx, 0, Load::Rate(target), shape, budget.seconds)?
        else {
            result.stopped_because = "the workload has no fixed-rate load generator".into();
            break;
        };
        let lost = point.cost.lost_total().unwrap_or(0.0);
        let achieved = point.outcome.achieved_rate();
        say(format_args!(
            "stress {name}: {target} req/s asked, {achieved:.0} achieved, {:.0} events/s, {lost} lost",
            point.cost.events.unwrap_or(0.0) / point.cost.seconds.max(1e-9),
        ));
        result.steps.push(point);
        if lost > 0.0 {
            result.knee = Some(target);
            result.stopped_because = format!("events were lost at {target} req/s");
            break;
        }
        let delivered = achieved.round() as u32;
        result.last_clean = result.last_clean.max(Some(delivered));
        if achieved < SATURATED * f64::from(target) {
            result.saturated = Some(target);
            result.stopped_because =
                format!("the machine saturated: {achieved:.0} of {target} req/s delivered");
            break;
        }
        rate *= budget.factor;
    }
    running.stop();
    Ok(result)
}

impl Series {
    pub fn to_json(&self) -> Value {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|p| {
                let events = p.cost.events.unwrap_or(0.0);
                json!({
                    "asked_rate": p.load.rate().unwrap_or(0),
                    "achieved_rate": round(p.outcome.achieved_rate(), 1),
                    "errors": p.outcome.errors,
                    "p99_us": round(p.outcome.latency.p99, 1),
                    "weft_events_per_second": round(events / p.cost.seconds.max(1e-9), 1),
                    "weft_events_lost": p.cost.lost_total(),
                    "weft_l7_parse_errors": p.cost.parse_errors(),
                    "weft_events_lost_by_stage": p.cost.lost,
                })
            })
            .collect();
        json!({
            "series": self.name,
            "config": self.config.id(),
            "last_clean_rate": self.last_clean,
            "knee_rate": self.knee,
            "saturated_at_rate": self.saturated,
            "stopped_because": self.stopped_because,
            "steps": steps,
        })
    }
}
