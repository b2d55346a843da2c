//! A minimal HTTP/1.1 client for cloud-hypervisor's API socket: one connection per request,
//! the request written at once, then the status line, headers and a body framed by
//! Content-Length, chunked encoding or the end of the connection. Sizes are bounded: a
//! misbehaving peer cannot make the shim allocate without limit.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::api::API_PREFIX;

/// Longest status or header line we accept.
const MAX_LINE: usize = 8 * 1024;
/// Most header lines we accept.
const MAX_HEADERS: usize = 100;
/// Largest response body we accept (vm.info with a big config is a few KiB).
pub const MAX_BODY: usize = 1024 * 1024;
/// Longest part of an error body quoted in an error message.
const MAX_QUOTED_BODY: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        })
    }
}

/// A failed API call; every variant names the method and endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ClhError {
    #[error("{method} {endpoint}: connect {}: {source}", socket.display())]
    Connect {
        method: Method,
        endpoint: String,
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("{method} {endpoint}: {source}")]
    Io {
        method: Method,
        endpoint: String,
        source: std::io::Error,
    },
    #[error("{method} {endpoint}: malformed response: {detail}")]
    Protocol {
        method: Method,
        endpoint: String,
        detail: String,
    },
    #[error("{method} {endpoint}: no answer within {timeout:?}")]
    Timeout {
        method: Method,
        endpoint: String,
        timeout: Duration,
    },
    #[error("{method} {endpoint} answered {status} {reason}: {}", quote_body(body))]
    Status {
        method: Method,
        endpoint: String,
        status: u16,
        reason: String,
        body: String,
    },
    #[error(
        "{method} {endpoint}: unexpected response body: {source}: {}",
        quote_body(body)
    )]
    Decode {
        method: Method,
        endpoint: String,
        body: String,
        source: serde_json::Error,
    },
    #[error("{method} {endpoint}: request body: {source}")]
    Encode {
        method: Method,
        endpoint: String,
        source: serde_json::Error,
    },
}

impl ClhError {
    /// True when the VMM's API is not listening (yet): worth retrying during start-up.
    pub fn is_connect(&self) -> bool {
        matches!(self, ClhError::Connect { .. })
    }
}

fn quote_body(body: &str) -> String {
    let b = body.trim();
    if b.is_empty() {
        "(empty body)".into()
    } else if b.len() > MAX_QUOTED_BODY {
        let mut end = MAX_QUOTED_BODY;
        while !b.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &b[..end])
    } else {
        b.to_string()
    }
}

/// One HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The API of one cloud-hypervisor process.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// `timeout` bounds each request, from connect to the last byte of the answer.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> ApiClient {
        ApiClient {
            socket: socket.into(),
            timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Same socket, another per-request bound.
    pub fn with_timeout(&self, timeout: Duration) -> ApiClient {
        ApiClient {
            socket: self.socket.clone(),
            timeout,
        }
    }

    /// Sends one request to `/api/v1/<endpoint>` and returns the response, whatever its status.
    pub async fn request(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClhError> {
        let path = format!("{API_PREFIX}{endpoint}");
        match tokio::time::timeout(self.timeout, self.exchange(method, &path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ClhError::Timeout {
                method,
                endpoint: path,
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClhError> {
        let mut stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClhError::Connect {
                    method,
                    endpoint: path.to_string(),
                    socket: self.socket.clone(),
                    source,
                })?;
        let io_err = |source| ClhError::Io {
            method,
            endpoint: path.to_string(),
            source,
        };
        let request = encode_request(method, path, body);
        stream.write_all(&request).await.map_err(io_err)?;
        let mut reader = BufReader::new(stream);
        read_response(&mut reader).await.map_err(|e| match e {
            ReadError::Io(source) => io_err(source),
            ReadError::Protocol(detail) => ClhError::Protocol {
                method,
                endpoint: path.to_string(),
                detail,
            },
        })
    }

    /// A request whose answer must be 2xx; returns the body (empty for 204).
    pub async fn call(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<&[u8]>,
    ) -> Result<Vec<u8>, ClhError> {
        let r = self.request(method, endpoint, body).await?;
        if r.is_success() {
            Ok(r.body)
        } else {
            Err(ClhError::Status {
                method,
                endpoint: format!("{API_PREFIX}{endpoint}"),
                status: r.status,
                reason: r.reason.clone(),
                body: r.body_text(),
            })
        }
    }

    /// `PUT` with an optional JSON body; returns the (possibly empty) answer body.
    pub async fn put<B: Serialize + ?Sized>(
        &self,
        endpoint: &str,
        body: Option<&B>,
    ) -> Result<Vec<u8>, ClhError> {
        let encoded = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|source| ClhError::Encode {
                method: Method::Put,
                endpoint: format!("{API_PREFIX}{endpoint}"),
                source,
            })?),
            None => None,
        };
        self.call(Method::Put, endpoint, encoded.as_deref()).await
    }

    /// `GET` of a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, endpoint: &str) -> Result<T, ClhError> {
        let body = self.call(Method::Get, endpoint, None).await?;
        decode(Method::Get, endpoint, &body)
    }
}

/// Parses a JSON answer body, quoting it on failure.
pub fn decode<T: DeserializeOwned>(
    method: Method,
    endpoint: &str,
    body: &[u8],
) -> Result<T, ClhError> {
    serde_json::from_slice(body).map_err(|source| ClhError::Decode {
        method,
        endpoint: format!("{API_PREFIX}{endpoint}"),
        body: String::from_utf8_lossy(body).into_owned(),
        source,
    })
}

/// The bytes of one request. A PUT always carries Content-Length (0 without a body): the
/// VMM's server needs it to know there is no body to wait for.
pub fn encode_request(method: Method, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    match body {
        Some(b) => {
            head.push_str("Content-Type: application/json\r\n");
            head.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        None if method == Method::Put => head.push_str("Content-Length: 0\r\n"),
        None => {}
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    out
}

#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    Protocol(String),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

fn protocol<T>(detail: impl Into<String>) -> Result<T, ReadError> {
    Err(ReadError::Protocol(detail.into()))
}

/// Reads one line ending in LF (CRLF expected, bare LF tolerated), without the line end.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, what: &str) -> Result<String, ReadError> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return protocol(format!("connection closed before the {what}"));
    }
    if buf.last() != Some(&b'\n') {
        if buf.len() > MAX_LINE {
            return protocol(format!("{what} longer than {MAX_LINE} bytes"));
        }
        return protocol(format!("connection closed inside the {what}"));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf).or_else(|_| protocol(format!("{what} is not UTF-8")))
}

/// Reads a whole response: status line, headers, body.
pub async fn read_response<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Response, ReadError> {
    let line = read_line(r, "status line").await?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return protocol(format!("status line {line:?} is not HTTP/1.x"));
    }
    let status: u16 = match parts.next().map(str::parse) {
        Some(Ok(s)) if (100..600).contains(&s) => s,
        _ => return protocol(format!("status line {line:?} has no valid status code")),
    };
    // cloud-hypervisor's server (micro_http) sends no reason phrase: use the usual one.
    let reason = match parts.next().map(str::trim) {
        Some(r) if !r.is_empty() => r.to_string(),
        _ => canonical_reason(status).to_string(),
    };

    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut count = 0;
    loop {
        let h = read_line(r, "headers").await?;
        if h.is_empty() {
            break;
        }
        count += 1;
        if count > MAX_HEADERS {
            return protocol(format!("more than {MAX_HEADERS} header lines"));
        }
        let Some((name, value)) = h.split_once(':') else {
            return protocol(format!("header line {h:?} has no ':'"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) if n <= MAX_BODY => content_length = Some(n),
                Ok(n) => return protocol(format!("body of {n} bytes is over {MAX_BODY}")),
                Err(_) => return protocol(format!("bad Content-Length {value:?}")),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .split(',')
                .any(|c| c.trim().eq_ignore_ascii_case("chunked"));
        }
    }

    // No body for these statuses whatever the headers say (RFC 9112 section 6.3).
    let body = if status < 200 || status == 204 || status == 304 {
        Vec::new()
    } else if chunked {
        read_chunked(r).await?
    } else if let Some(n) = content_length {
        let mut b = vec![0u8; n];
        r.read_exact(&mut b).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ReadError::Protocol(format!("connection closed inside a {n}-byte body"))
            } else {
                ReadError::Io(e)
            }
        })?;
        b
    } else {
        // Neither length nor chunks: the body ends with the connection.
        let mut b = Vec::new();
        (&mut *r)
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut b)
            .await?;
        if b.len() > MAX_BODY {
            return protocol(format!("body over {MAX_BODY} bytes"));
        }
        b
    };
    Ok(Response {
        status,
        reason,
        body,
    })
}

/// The usual reason phrase of the statuses the VMM's API answers with.
fn canonical_reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

async fn read_chunked<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r, "chunk size").await?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return protocol(format!("bad chunk size line {line:?}"));
        };
        if size == 0 {
            // Trailer fields (ignored) up to the empty line.
            loop {
                if read_line(r, "chunked trailer").await?.is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return protocol(format!("body over {MAX_BODY} bytes"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ReadError::Protocol("connection closed inside a chunk".into())
            } else {
                ReadError::Io(e)
            }
        })?;
        if !read_line(r, "chunk end").await?.is_empty() {
            return protocol("chunk not followed by CRLF");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: &[u8]) -> Result<Response, ReadError> {
        let mut r = BufReader::new(raw);
        read_response(&mut r).await
    }

    fn protocol_detail(r: Result<Response, ReadError>) -> String {
        match r {
            Err(ReadError::Protocol(d)) => d,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn requests() {
        let r = encode_request(Method::Put, "/api/v1/vm.boot", None);
        assert_eq!(
            String::from_utf8_lossy(&r),
            "PUT /api/v1/vm.boot HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Length: 0\r\n\r\n"
        );
        let r = encode_request(Method::Put, "/api/v1/vm.create", Some(b"{\"a\":1}"));
        assert_eq!(
            String::from_utf8_lossy(&r),
            "PUT /api/v1/vm.create HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
        );
        let r = encode_request(Method::Get, "/api/v1/vmm.ping", None);
        assert_eq!(
            String::from_utf8_lossy(&r),
            "GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn content_length_body() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 17\r\n\r\n{\"version\":\"41\"}\nEXTRA")
            .await
            .expect("parse");
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, "OK");
        assert_eq!(r.body, b"{\"version\":\"41\"}\n");
    }

    /// What cloud-hypervisor's server writes: no reason phrase, keep-alive, no length on 204.
    #[tokio::test]
    async fn micro_http_style_answers() {
        let r = parse(
            b"HTTP/1.1 204 \r\nServer: Cloud Hypervisor API\r\nConnection: keep-alive\r\n\r\n",
        )
        .await
        .expect("parse");
        assert_eq!((r.status, r.reason.as_str()), (204, "No Content"));
        let r = parse(b"HTTP/1.1 500 \r\nServer: Cloud Hypervisor API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n\"VmCreate\"")
            .await
            .expect("parse");
        assert_eq!(r.status, 500);
        assert_eq!(r.reason, "Internal Server Error");
        assert_eq!(r.body_text(), "\"VmCreate\"");
    }

    #[tokio::test]
    async fn no_content_ignores_the_rest() {
        let r = parse(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n")
            .await
            .expect("parse");
        assert_eq!((r.status, r.body.len()), (204, 0));
        assert!(r.is_success());
    }

    #[tokio::test]
    async fn chunked_body_with_extension_and_trailer() {
        let r = parse(
            b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        )
        .await
        .expect("parse");
        assert_eq!(r.status, 500);
        assert_eq!(r.reason, "Internal Server Error");
        assert_eq!(r.body_text(), "hello, world");
        assert!(!r.is_success());
    }

    #[tokio::test]
    async fn body_until_close_and_bare_lf() {
        let r = parse(b"HTTP/1.0 404 Not Found\n\nno such VM")
            .await
            .expect("parse");
        assert_eq!((r.status, r.body_text().as_str()), (404, "no such VM"));
    }

    #[tokio::test]
    async fn malformed_responses_are_named() {
        let d = protocol_detail(parse(b"").await);
        assert!(d.contains("closed before the status line"), "{d}");
        let d = protocol_detail(parse(b"SSH-2.0-OpenSSH\r\n\r\n").await);
        assert!(d.contains("not HTTP/1.x"), "{d}");
        let d = protocol_detail(parse(b"HTTP/1.1 abc OK\r\n\r\n").await);
        assert!(d.contains("no valid status code"), "{d}");
        let d = protocol_detail(parse(b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n").await);
        assert!(d.contains("has no ':'"), "{d}");
        let d = protocol_detail(parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").await);
        assert!(d.contains("bad Content-Length"), "{d}");
        let d = protocol_detail(
            parse(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    MAX_BODY + 1
                )
                .as_bytes(),
            )
            .await,
        );
        assert!(d.contains("over"), "{d}");
        let d = protocol_detail(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").await);
        assert!(d.contains("inside a 10-byte body"), "{d}");
        let d = protocol_detail(
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").await,
        );
        assert!(d.contains("bad chunk size"), "{d}");
        let d = protocol_detail(
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n")
                .await,
        );
        assert!(d.contains("not followed by CRLF"), "{d}");
        let long = format!("HTTP/1.1 200 {}\r\n\r\n", "x".repeat(MAX_LINE + 10));
        let d = protocol_detail(parse(long.as_bytes()).await);
        assert!(d.contains("longer than"), "{d}");
        let d = protocol_detail(parse(b"HTTP/1.1 200 OK\r\nContent-Le").await);
        assert!(d.contains("closed inside the headers"), "{d}");
    }

    #[test]
    fn error_messages_quote_method_endpoint_status_and_body() {
        let e = ClhError::Status {
            method: Method::Put,
            endpoint: "/api/v1/vm.create".into(),
            status: 500,
            reason: "Internal Server Error".into(),
            body: "Error creating VM: bad kernel\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "PUT /api/v1/vm.create answered 500 Internal Server Error: Error creating VM: bad kernel"
        );
        let e = ClhError::Status {
            method: Method::Put,
            endpoint: "/api/v1/vm.boot".into(),
            status: 404,
            reason: "Not Found".into(),
            body: String::new(),
        };
        assert!(
            e.to_string().ends_with("404 Not Found: (empty body)"),
            "{e}"
        );
        let long = "é".repeat(MAX_QUOTED_BODY);
        assert!(quote_body(&long).ends_with("..."));
    }
}
