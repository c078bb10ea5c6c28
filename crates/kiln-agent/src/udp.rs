//! A UDP echo for network checks between guests (`kiln-agent udp ...`): Debian's busybox `nc`
//! has no UDP mode, so the agent provides one.
//!
//! The server answers each datagram with `echo:` and the same bytes; the client sends one
//! datagram and succeeds when the echo comes back, so a round trip proves UDP both ways.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// Errors of the UDP echo.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// A socket operation failed.
    #[error("UDP {what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The reply was not the echo of what was sent.
    #[error("UDP reply {0:?} is not the echo of the message")]
    WrongReply(String),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> UdpError {
    move |source| UdpError::Io { what, source }
}

/// Answers `count` datagrams on `port`, each with `echo:` + the datagram.
pub fn serve(port: u16, count: usize) -> Result<(), UdpError> {
    let socket = UdpSocket::bind(("0.0.0.0", port)).map_err(io("bind"))?;
    answer(&socket, count)
}

/// Answers `count` datagrams on a bound `socket`.
fn answer(socket: &UdpSocket, count: usize) -> Result<(), UdpError> {
    let mut buf = [0u8; 2048];
    for _ in 0..count {
        let (n, from) = socket.recv_from(&mut buf).map_err(io("receive"))?;
        let mut reply = b"echo:".to_vec();
        reply.extend_from_slice(&buf[..n]);
        socket.send_to(&reply, from).map_err(io("send"))?;
    }
    Ok(())
}

/// Sends `message` to `to` until its echo arrives (resending every `interval`, at most
/// `attempts` times: the first datagrams can be lost while ARP resolves), from local port
/// `from_port` (0: any).
pub fn round_trip(
    to: SocketAddr,
    from_port: u16,
    message: &str,
    interval: Duration,
    attempts: u32,
) -> Result<(), UdpError> {
    let socket = UdpSocket::bind(("0.0.0.0", from_port)).map_err(io("bind"))?;
    socket.set_read_timeout(Some(interval)).map_err(io("set a timeout"))?;
    let mut buf = [0u8; 2048];
    let mut last = io("receive")(std::io::ErrorKind::TimedOut.into());
    for _ in 0..attempts.max(1) {
        socket.send_to(message.as_bytes(), to).map_err(io("send"))?;
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => {
                let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                return if reply == format!("echo:{message}") {
                    Ok(())
                } else {
                    Err(UdpError::WrongReply(reply))
                };
            }
            Err(e) => last = io("receive")(e),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_through_the_echo_server_succeeds() {
        // Bound here, before the thread starts: a port probed and released could be taken by
        // the client's own ephemeral bind before the server binds it again.
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        let server = std::thread::spawn(move || answer(&socket, 1));
        round_trip(to, 0, "kiln-udp", Duration::from_millis(200), 150).unwrap();
        server.join().unwrap().unwrap();
    }
}
