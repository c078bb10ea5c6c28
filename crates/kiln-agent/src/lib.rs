//! The Kiln guest agent and its host-side client.
//!
//! In the guest, `kiln-agent` listens on `AF_VSOCK` port [`AGENT_PORT`] ([`vsock`]) and speaks
//! the line-delimited JSON protocol of [`protocol`] on each connection. On the host,
//! [`client::exec`] reaches it through the VMM's vsock Unix socket (Firecracker's
//! `CONNECT <port>` convention, see `kiln_virtio::vsock`), which is also what
//! `kiln-agent exec --uds PATH -- CMD...` does. At boot it applies a NoCloud seed
//! ([`nocloud`], [`netconfig`], [`firstboot`]) before it serves.

pub mod bench;
pub mod client;
pub mod firstboot;
pub mod netconfig;
pub mod nocloud;
pub mod protocol;
pub mod pty;
pub mod stream;
pub mod udp;
pub mod vsock;

/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 52;
