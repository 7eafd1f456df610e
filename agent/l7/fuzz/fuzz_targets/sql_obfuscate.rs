#![no_main]
//! sql_obfuscate: any text, either dialect: no panic, bounded output.

use libfuzzer_sys::fuzz_target;
use weft_l7::sql_obfuscate::{Dialect, obfuscate_sql, sql_operation};

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    for dialect in [Dialect::Postgres, Dialect::Mysql] {
        let out = obfuscate_sql(&sql, dialect, 64);
        assert!(out.len() <= 64 + '…'.len_utf8());
    }
    let _ = sql_operation(&sql);
});
