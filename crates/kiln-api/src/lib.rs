//! The kilnd API as a contract shared by the daemon (`kilnd`), its CLI (`kiln`) and the tests.
//!
//! * [`types`]: every request and response body, with `serde` and `utoipa` schemas; the
//!   daemon generates `docs/openapi.json` from them.
//! * [`client`]: a blocking HTTP/1.1 client over the daemon's Unix socket or TCP with TLS (one
//!   request per connection, plus connection upgrades for the console), enough for a CLI and
//!   for tests; no async runtime needed.
//! * [`storage`]: volumes, and the disks and NICs of a VM definition.
//! * [`network`]: virtual networks.
//! * [`paths`]: where the daemon listens and keeps its state by default.

pub mod acl;
pub mod client;
pub mod network;
pub mod paths;
pub mod storage;
pub mod types;

pub use acl::*;
pub use client::{Client, ClientError, Connection, Response};
pub use network::*;
pub use storage::*;
pub use types::*;
