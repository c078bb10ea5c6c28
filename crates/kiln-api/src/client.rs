//! A blocking HTTP/1.1 client of kilnd, over its Unix socket or over TCP with TLS (rustls).
//!
//! One request per connection (`Connection: close`): the CLI makes one or two requests per run,
//! and tests that need concurrency use threads. Bodies are JSON; errors from the daemon come back
//! as [`ClientError::Api`] with the decoded [`ApiError`]. [`Client::upgrade`] switches a
//! connection to another protocol (the console) and hands back the raw stream.

use crate::types::ApiError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The CA bundle trusted for `https://` when no CA file is given (Debian's; `SSL_CERT_FILE`
/// overrides it).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to kilnd at {target} (is kilnd running? see --socket or --url)")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to kilnd")]
    Io(#[from] std::io::Error),
    #[error("kilnd sent a malformed HTTP answer: {0}")]
    Malformed(String),
    #[error("kilnd sent a body that is not the expected JSON")]
    Json(#[from] serde_json::Error),
    /// The daemon answered with an error status.
    #[error("{}", .body.message)]
    Api { status: u16, body: ApiError },
    #[error("{0:?} is not a kilnd URL: give https://HOST:PORT")]
    Url(String),
    #[error("reading the CA certificates {path}")]
    CaCert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the CA file {0} holds no usable certificate")]
    NoCaCert(PathBuf),
    #[error("setting up TLS")]
    Tls(#[source] rustls::Error),
    #[error("kilnd did not switch to {0}")]
    NotUpgraded(String),
}

impl ClientError {
    /// The HTTP status, when the daemon answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A raw answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    /// Every header, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Decodes the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A connection to kilnd: a Unix socket or a TLS stream over TCP.
pub trait Connection: Read + Write + Send {
    /// Bounds each read (`None`: wait for ever); a read that times out fails with
    /// `WouldBlock` or `TimedOut` and may be retried.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Connection for UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }
}

impl Connection for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }
}

/// Where kilnd listens.
#[derive(Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tls { host: String, port: u16, config: Arc<rustls::ClientConfig> },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tls { host, port, .. } => write!(f, "https://{host}:{port}"),
        }
    }
}

/// A client bound to kilnd's address and an optional bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    token: Option<String>,
    timeout: Duration,
}

impl Client {
    /// A client of the daemon listening on the Unix socket `socket`.
    pub fn new(socket: impl Into<PathBuf>, token: Option<String>) -> Self {
        Client { endpoint: Endpoint::Unix(socket.into()), token, timeout: Duration::from_secs(120) }
    }

    /// A client of the daemon at `url` (`https://HOST:PORT`), trusting the CA certificates of
    /// the PEM file `ca_cert`, else the system's bundle.
    pub fn tls(
        url: &str,
        ca_cert: Option<&Path>,
        token: Option<String>,
    ) -> Result<Self, ClientError> {
        let (host, port) = parse_url(url)?;
        let bundle = match ca_cert {
            Some(path) => path.to_owned(),
            None => std::env::var_os("SSL_CERT_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE)),
        };
        let certs = CertificateDer::pem_file_iter(&bundle)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|source| ClientError::CaCert { path: bundle.clone(), source })?;
        let mut roots = rustls::RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(ClientError::NoCaCert(bundle));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(ClientError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let endpoint = Endpoint::Tls { host, port, config: Arc::new(config) };
        Ok(Client { endpoint, token, timeout: Duration::from_secs(120) })
    }

    /// Where the daemon is, for messages: a socket path or a URL.
    pub fn target(&self) -> String {
        format!("{:?}", self.endpoint)
    }

    /// Opens a connection with the client's timeouts.
    pub fn connect(&self) -> Result<Box<dyn Connection>, ClientError> {
        let connect_err = |source| ClientError::Connect { target: self.target(), source };
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path).map_err(connect_err)?;
                stream.set_read_timeout(Some(self.timeout))?;
                stream.set_write_timeout(Some(self.timeout))?;
                Ok(Box::new(stream))
            }
            Endpoint::Tls { host, port, config } => {
                let tcp = TcpStream::connect((host.as_str(), *port)).map_err(connect_err)?;
                tcp.set_read_timeout(Some(self.timeout))?;
                tcp.set_write_timeout(Some(self.timeout))?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| ClientError::Url(host.clone()))?;
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(ClientError::Tls)?;
                Ok(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
        }
    }

    fn head(&self, method: &str, path: &str) -> String {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: kilnd\r\n");
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head
    }

    /// Sends one request with an optional raw body and returns the raw answer, whatever its
    /// status.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let mut stream = self.connect()?;
        let mut head = self.head(method, path);
        head.push_str("Connection: close\r\n");
        let body = body.unwrap_or_default();
        if !body.is_empty() || method == "POST" || method == "PUT" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        // One write for head and body, so a server that answers from the head alone (401,
        // 404) has read the whole request before it closes.
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        match stream.write_all(&request).and_then(|()| stream.flush()) {
            Ok(()) => {}
            // The server answered and closed before taking the whole body: its answer is
            // still there to read.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => return Err(e.into()),
        }
        let mut raw = Vec::new();
        match stream.read_to_end(&mut raw) {
            Ok(_) => {}
            // A TLS peer that closes without close_notify, after a whole answer.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(e.into()),
        }
        parse_response(&raw)
    }

    /// `POST path` asking to switch the connection to `protocol` (HTTP/1.1 upgrade). On
    /// `101 Switching Protocols` returns the connection and the bytes that came after the
    /// answer's head; an error answer becomes [`ClientError::Api`].
    pub fn upgrade(
        &self,
        path: &str,
        protocol: &str,
    ) -> Result<(Box<dyn Connection>, Vec<u8>), ClientError> {
        let mut stream = self.connect()?;
        let mut head = self.head("POST", path);
        head.push_str(&format!(
            "Connection: Upgrade\r\nUpgrade: {protocol}\r\nContent-Length: 0\r\n\r\n"
        ));
        stream.write_all(head.as_bytes())?;
        stream.flush()?;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(ClientError::Malformed("the connection closed in the head".into()));
            }
            raw.extend_from_slice(&chunk[..n]);
        };
        let head = parse_head(&raw)?;
        if head.response.status == 101 {
            return Ok((stream, raw[end..].to_vec()));
        }
        // An error answer: read its body (the connection stays open, so by its length).
        while raw.len() < end + head.length.unwrap_or(0) {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
        }
        check(&parse_response(&raw)?)?;
        Err(ClientError::NotUpgraded(protocol.to_owned()))
    }

    /// Sends `body` as JSON (if any) and decodes a JSON answer; an error status becomes
    /// [`ClientError::Api`].
    pub fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let bytes = body.map(serde_json::to_vec).transpose()?;
        let response = self.raw(method, path, bytes.as_deref())?;
        check(&response)?;
        Ok(response.json()?)
    }

    /// `GET path` decoded as JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>("GET", path, None)
    }

    /// `POST path` with an empty body, decoded as JSON.
    pub fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>("POST", path, None)
    }

    /// `GET path` as text.
    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        Ok(self.get_raw(path)?.text())
    }

    /// `GET path`, the whole answer; an error status becomes [`ClientError::Api`].
    pub fn get_raw(&self, path: &str) -> Result<Response, ClientError> {
        let response = self.raw("GET", path, None)?;
        check(&response)?;
        Ok(response)
    }

    /// `PUT path` with `body` as JSON, expecting no body back.
    pub fn put<B: Serialize>(&self, path: &str, body: &B) -> Result<(), ClientError> {
        let bytes = serde_json::to_vec(body)?;
        let response = self.raw("PUT", path, Some(&bytes))?;
        check(&response)
    }

    /// `DELETE path`, expecting no body.
    pub fn delete(&self, path: &str) -> Result<(), ClientError> {
        let response = self.raw("DELETE", path, None)?;
        check(&response)
    }
}

/// `https://HOST:PORT[/]` into host and port (443 if absent); `[v6]` hosts are unbracketed.
fn parse_url(url: &str) -> Result<(String, u16), ClientError> {
    let bad = || ClientError::Url(url.to_owned());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => 443,
            None => return Err(bad()),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| bad())?),
            None => (authority, 443),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// Turns an error status into [`ClientError::Api`].
fn check(response: &Response) -> Result<(), ClientError> {
    if (200..300).contains(&response.status) {
        return Ok(());
    }
    let body = response.json::<ApiError>().unwrap_or_else(|_| ApiError {
        error: "http".to_owned(),
        message: format!("HTTP {}: {}", response.status, response.text().trim()),
        field: None,
        state: None,
        permission: None,
    });
    Err(ClientError::Api { status: response.status, body })
}

/// The head of an answer (status and headers, empty body), where its body starts, whether the
/// body is chunked and its declared length.
struct Head {
    response: Response,
    body_start: usize,
    chunked: bool,
    length: Option<usize>,
}

fn parse_response(raw: &[u8]) -> Result<Response, ClientError> {
    let Head { response, body_start, chunked, length } = parse_head(raw)?;
    let rest = &raw[body_start..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| ClientError::Malformed("body shorter than Content-Length".to_owned()))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { body, ..response })
}

fn parse_head(raw: &[u8]) -> Result<Head, ClientError> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ClientError::Malformed("no end of headers".to_owned()))?;
    let head = std::str::from_utf8(&raw[..split])
        .map_err(|_| ClientError::Malformed("headers are not UTF-8".to_owned()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| ClientError::Malformed(format!("status line {status_line:?}")))?;
    let mut chunked = false;
    let mut length = None;
    let mut content_type = None;
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        let name = name.trim().to_ascii_lowercase();
        headers.push((name.clone(), value.to_owned()));
        match name.as_str() {
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "content-length" => length = value.parse::<usize>().ok(),
            "content-type" => content_type = Some(value.to_owned()),
            _ => {}
        }
    }
    let response = Response { status, content_type, headers, body: Vec::new() };
    Ok(Head { response, body_start: split + 4, chunked, length })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, ClientError> {
    let bad = || ClientError::Malformed("bad chunked encoding".to_owned());
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| bad())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or_else(bad)?);
        data = data.get(size + 2..).ok_or_else(bad)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_answers() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").expect("parses");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .expect("parses");
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
    }

    #[test]
    fn https_urls_give_host_and_port() {
        let ok = |u: &str| parse_url(u).expect("parses");
        assert_eq!(ok("https://kiln.example:8443"), ("kiln.example".to_owned(), 8443));
        assert_eq!(ok("https://127.0.0.1:9/"), ("127.0.0.1".to_owned(), 9));
        assert_eq!(ok("https://[::1]:7443"), ("::1".to_owned(), 7443));
        assert_eq!(ok("https://host"), ("host".to_owned(), 443));
        for bad in ["http://host:1", "https://", "https://host:x", "https://h:1/v1", "host:1"] {
            assert!(matches!(parse_url(bad), Err(ClientError::Url(_))), "{bad}");
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert!(parse_response(b"nonsense").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }
}
