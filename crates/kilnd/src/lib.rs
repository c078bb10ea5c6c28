//! `kilnd`, Kiln's VM manager: one daemon per host that keeps VM definitions and states in
//! SQLite, runs one `kiln-vmm` process per VM and supervises it, and serves a REST API on a Unix
//! socket with authentication, per-VM and per-project grants, and an audit log.
//!
//! | module | job |
//! |---|---|
//! | [`server`] | start-up: lock the state dir, open the database, re-adopt VMMs, serve |
//! | [`conn`] | connection limits (in all, per peer) and header, idle and body timeouts |
//! | [`tls`] | the API on TCP with TLS (rustls) |
//! | [`api`] | routes, auth/audit middleware, handlers, error answers, the OpenAPI document |
//! | [`lifecycle`] | the verbs and their state transitions |
//! | [`scheduler`] | the host's capacity; planning rounds with `kiln-sched`'s planner |
//! | [`supervisor`] | spawning VMMs, waiting for their end, re-adoption after a restart |
//! | [`db`] | the SQLite schema and every query |
//! | [`auth`] | tokens, principals, roles and grants |
//! | [`validate`] | checks of a VM definition |
//! | [`bootfiles`] | whose rights open a VM's kernel and initrd; never kilnd's own files |
//! | [`logs`] | per-VM console and VMM logs, bounded by rotation |
//! | [`net`] | networks on the host: bridges, TAPs, dnsmasq, nftables, address management |
//! | [`procfs`] | `/proc` reads and signals, guarded against pid reuse |

pub mod api;
pub mod auth;
pub mod bootfiles;
pub mod conn;
pub mod db;
pub mod filecopy;
pub mod image_import;
pub mod images;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod net;
pub mod procfs;
pub mod scheduler;
pub mod seed;
pub mod server;
pub mod supervisor;
pub mod tls;
pub mod validate;
pub mod vm_image;
pub mod volumes;

/// `error: cause: root cause` on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
