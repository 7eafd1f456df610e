//! Flows: the connection table that merges kernel events into flow
//! records, the records themselves, their store and filters.

pub mod addr;
pub mod clock;
pub mod drops;
pub mod emit;
pub mod filter;
pub mod record;
pub mod requests;
pub mod runtime;
pub mod serving;
pub mod store;
pub mod table;
pub mod tcp;
pub mod top;
pub mod udp;
