//! Checks shared by the SQL tests (PostgreSQL and MySQL): both run the
//! same kinds of statements (an INSERT with literals, a SELECT by id, a
//! 0.2 s sleep, one error) and weft must report them alike.

use serde_json::Value;

use crate::agent::Agent;

/// Who talks to whom, and what weft calls the protocol and the system.
pub struct SqlExchange<'a> {
    /// `protocol` of the L7 records (`postgres`, `mysql`).
    pub protocol: &'a str,
    /// `db_system_name` of the metrics (`postgresql`, `mysql`).
    pub system: &'a str,
    pub client: &'a str,
    pub server: &'a str,
    pub server_ip: &'a str,
    pub port: u16,
}

impl SqlExchange<'_> {
    /// One statement's record, from either side.
    pub fn check_record(
        &self,
        r: &Value,
        operation: &str,
        rows: Option<u64>,
        error_code: Option<&str>,
    ) {
        assert_eq!(r["l7"]["protocol"], self.protocol, "{r:#}");
        assert_eq!(r["source"]["process"], self.client, "{r:#}");
        assert_eq!(r["destination"]["process"], self.server, "{r:#}");
        assert_eq!(r["destination"]["ip"], self.server_ip, "{r:#}");
        assert_eq!(r["destination"]["port"], self.port, "{r:#}");
        assert!(r["l7"]["answered"].is_null(), "unanswered: {r:#}");
        assert_eq!(r["l7"]["operation"], operation, "{r:#}");
        match rows {
            Some(n) => assert_eq!(r["l7"]["rows"], n, "{r:#}"),
            None => assert!(r["l7"]["rows"].is_null(), "{r:#}"),
        }
        match error_code {
            Some(code) => assert_eq!(r["l7"]["error_code"], code, "{r:#}"),
            None => assert!(r["l7"]["error_code"].is_null(), "{r:#}"),
        }
    }

    /// One side's records in order: literals never leave the agent (the
    /// INSERT at `insert` has none, the SELECT at `select` reads
    /// `select_statement`), the sleep at `sleep` takes its 0.2 s and the
    /// SELECT less.
    pub fn check_side(
        &self,
        sorted: &[Value],
        insert: usize,
        select: usize,
        select_statement: &str,
        sleep: usize,
    ) {
        let inserted = sorted[insert]["l7"]["statement"]
            .as_str()
            .expect("statement");
        assert!(!inserted.contains("alice"), "{inserted}");
        assert_eq!(sorted[select]["l7"]["statement"], select_statement);
        let slept = sorted[sleep]["l7"]["latency_us"].as_u64().expect("latency");
        assert!(
            (200_000..2_000_000).contains(&slept),
            "the 0.2 s sleep: {slept} µs"
        );
        let selected = sorted[select]["l7"]["latency_us"]
            .as_u64()
            .expect("latency");
        assert!(selected < 200_000, "SELECT took {selected} µs");
    }

    /// The client's histogram: `total` operations, 3 SELECTs, one error.
    pub fn check_metrics(&self, agent: &Agent, total: usize, error_type: &str) {
        let db = "db_client_operation_duration_seconds_count";
        let system = format!("db_system_name=\"{}\"", self.system);
        let dport = format!("destination_port=\"{}\"", self.port);
        assert_eq!(agent.metric_sum(db, &[&system, &dport]), total as f64);
        assert_eq!(
            agent.metric_sum(db, &[&system, &dport, "db_operation_name=\"SELECT\""]),
            3.0
        );
        let error = format!("error_type=\"{error_type}\"");
        assert_eq!(agent.metric_sum(db, &[&system, &dport, &error]), 1.0);
    }
}
