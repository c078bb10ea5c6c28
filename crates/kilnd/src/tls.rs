//! The API on TCP with TLS (rustls, ring provider): `--listen-tls ADDR:PORT --tls-cert PEM
//! --tls-key PEM`.
//!
//! One task per connection: it peeks at the first byte, answers a plain-HTTP client with a
//! plain `400` that says to use `https://` (instead of a handshake error it cannot read), runs
//! the TLS handshake under a timeout, then serves HTTP/1.1 with upgrades (the console) through
//! the same router as the Unix socket, within the limits of [`crate::conn`] (a client over them
//! is closed before its handshake). There is no peer uid on TCP, so every request needs a
//! bearer token. A slow handshake never holds up other connections.

use crate::api::Peer;
use crate::conn::{self, Gate, Limits, PeerKey};
use axum::extract::ConnectInfo;
use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Longest wait for a client's first byte and for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record that carries a handshake (ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Where and with what to serve TLS.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why TLS cannot be set up. Each names the file or address at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the TLS certificate {path}")]
    Cert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the TLS certificate file {0} holds no PEM certificate")]
    NoCert(PathBuf),
    #[error("reading the TLS private key {path}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the TLS key {key} does not fit the certificate {cert}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("listening on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The server configuration from PEM files: a certificate chain (leaf first) and its key
/// (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert { path: cert.to_owned(), source })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(cert.to_owned()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|source| TlsError::Key { path: key.to_owned(), source })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mismatch =
        |source| TlsError::Mismatch { cert: cert.to_owned(), key: key.to_owned(), source };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(mismatch)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Binds the TCP listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, TlsError> {
    TcpListener::bind(addr).await.map_err(|source| TlsError::Bind { addr, source })
}

/// Serves `router` on `listener` with TLS until the task is dropped, each connection within
/// the gate's limits (per peer by IP address).
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    gate: Arc<Gate>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(config);
    let router = router.layer(axum::Extension(ConnectInfo(Peer { uid: None, gid: None })));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: do not spin.
                eprintln!("kilnd: TLS listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over a limit, the connection is closed before the handshake costs anything.
        let Ok(ticket) = gate.admit(PeerKey::Ip(peer.ip())) else { continue };
        let (acceptor, router, stop) = (acceptor.clone(), router.clone(), stop.clone());
        let limits = gate.limits();
        tokio::spawn(async move {
            let _ticket = ticket;
            if let Err(why) = connection(stream, acceptor, router, limits, stop).await {
                eprintln!("kilnd: TLS connection from {peer}: {why}");
            }
        });
    }
}

async fn connection(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    router: Router,
    limits: Limits,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => {}
        Ok(Ok(1)) => return refuse_plain_http(stream).await,
        Ok(Ok(_)) => return Ok(()), // closed before a byte
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no data within the handshake timeout".to_owned()),
    }
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
        Err(_) => return Err("the TLS handshake timed out".to_owned()),
    };
    match conn::serve(tls, router, limits, stop).await {
        Err(e) if !e.is_timeout() && !e.is_incomplete_message() => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// Answers a client that speaks plain HTTP to the TLS port, so it sees why.
async fn refuse_plain_http(stream: TcpStream) -> Result<(), String> {
    let body = "{\"error\":\"bad_request\",\"message\":\"this port speaks HTTPS: use https:// (kiln --url https://HOST:PORT --ca-cert PEM)\"}";
    conn::answer_and_close(stream, "400 Bad Request", body, Duration::from_secs(1)).await;
    Ok(())
}
