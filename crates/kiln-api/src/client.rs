//! A blocking HTTP/1.1 client over kilnd's Unix socket.
//!
//! One request per connection (`Connection: close`): the CLI makes one or two requests per run,
//! and tests that need concurrency use threads. Bodies are JSON; errors from the daemon come back
//! as [`ClientError::Api`] with the decoded [`ApiError`].

use crate::types::ApiError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to kilnd at {path} (is kilnd running? see --socket)")]
    Connect {
        path: PathBuf,
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

/// A client bound to a socket path and an optional bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    token: Option<String>,
    timeout: Duration,
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>, token: Option<String>) -> Self {
        Client { socket: socket.into(), token, timeout: Duration::from_secs(120) }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request with an optional raw body and returns the raw answer, whatever its
    /// status.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let mut stream = UnixStream::connect(&self.socket)
            .map_err(|source| ClientError::Connect { path: self.socket.clone(), source })?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: kilnd\r\nConnection: close\r\n");
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || method == "POST" || method == "PUT" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        parse_response(&raw)
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

    /// `DELETE path`, expecting no body.
    pub fn delete(&self, path: &str) -> Result<(), ClientError> {
        let response = self.raw("DELETE", path, None)?;
        check(&response)
    }
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

fn parse_response(raw: &[u8]) -> Result<Response, ClientError> {
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
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| ClientError::Malformed("body shorter than Content-Length".to_owned()))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, content_type, headers, body })
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
    fn garbage_is_malformed_not_a_panic() {
        assert!(parse_response(b"nonsense").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }
}
