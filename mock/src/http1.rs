//! A minimal HTTP/1.1 server for the mock: one thread per connection, keep-alive,
//! `content-length` and chunked request bodies, plain and chunked (streamed)
//! responses. Our own because the mock must never stall a pooled connection that
//! Envoy keeps open (a thread pool that parks tasks behind idle keep-alive
//! connections made requests wait for tens of seconds).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;

pub struct Request {
    pub method: String,
    pub url: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, body: Vec<u8>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body,
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// Writes the answer to one request.
pub struct Responder<'a> {
    stream: &'a mut TcpStream,
    done: bool,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

impl Responder<'_> {
    fn head(&mut self, status: u16, headers: &[(String, String)], framing: &str) -> io::Result<()> {
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str(framing);
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes())
    }

    pub fn respond(&mut self, response: Response) -> io::Result<()> {
        self.done = true;
        let framing = format!("content-length: {}\r\n", response.body.len());
        self.head(response.status, &response.headers, &framing)?;
        self.stream.write_all(&response.body)?;
        self.stream.flush()
    }

    /// Starts a chunked response; each `chunk` is sent (and flushed) at once.
    pub fn start_stream(&mut self, status: u16, headers: &[(String, String)]) -> io::Result<()> {
        self.done = true;
        self.head(status, headers, "transfer-encoding: chunked\r\n")?;
        self.stream.flush()
    }

    pub fn chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.stream
            .write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
        self.stream.write_all(data)?;
        self.stream.write_all(b"\r\n")?;
        self.stream.flush()
    }

    pub fn end_stream(&mut self) -> io::Result<()> {
        self.stream.write_all(b"0\r\n\r\n")?;
        self.stream.flush()
    }
}

/// Serves `handler` on `listener` until the process ends.
pub fn serve<H>(listener: TcpListener, handler: Arc<H>)
where
    H: Fn(Request, &mut Responder<'_>) + Send + Sync + 'static,
{
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let handler = Arc::clone(&handler);
        thread::spawn(move || connection(stream, &*handler));
    }
}

fn connection<H>(mut stream: TcpStream, handler: &H)
where
    H: Fn(Request, &mut Responder<'_>),
{
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buf) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(_) => {
                let _ = stream.write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                return;
            }
        };
        let close = request
            .headers
            .iter()
            .any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close"));
        let mut responder = Responder {
            stream: &mut stream,
            done: false,
        };
        handler(request, &mut responder);
        if !responder.done || close {
            return;
        }
    }
}

/// Fills `buf` from the stream; false at end of stream.
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one request; `Ok(None)` when the client closed the connection between requests.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let (head_len, method, url, headers) = loop {
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut parsed);
        match req.parse(buf).map_err(|e| bad(&e.to_string()))? {
            httparse::Status::Complete(len) => {
                let headers = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (
                    len,
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    headers,
                );
            }
            httparse::Status::Partial => {
                if buf.len() > MAX_HEAD {
                    return Err(bad("request head too large"));
                }
                if !fill(stream, buf)? {
                    return if buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(bad("connection closed mid-request"))
                    };
                }
            }
        }
    };
    buf.drain(..head_len);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim().to_string())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(stream, buf)?
    } else {
        let len: usize = match header("content-length") {
            Some(v) => v.parse().map_err(|_| bad("bad content-length"))?,
            None => 0,
        };
        if len > MAX_BODY {
            return Err(bad("body too large"));
        }
        while buf.len() < len {
            if !fill(stream, buf)? {
                return Err(bad("connection closed mid-body"));
            }
        }
        buf.drain(..len).collect()
    };
    Ok(Some(Request {
        method,
        url,
        headers,
        body,
    }))
}

fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<String> {
    loop {
        if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..pos]).into_owned();
            buf.drain(..pos + 2);
            return Ok(line);
        }
        if buf.len() > MAX_HEAD || !fill(stream, buf)? {
            return Err(bad("bad chunked body"));
        }
    }
}

fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(stream, buf)?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            // Trailers, then the blank line that ends the body.
            while !read_line(stream, buf)?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(bad("body too large"));
        }
        while buf.len() < size + 2 {
            if !fill(stream, buf)? {
                return Err(bad("connection closed mid-chunk"));
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}
