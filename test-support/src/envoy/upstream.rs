//! An HTTP/1.1 upstream that answers every request with what it received, as JSON, and records it.

use super::http::{Message, read_message};
use serde_json::{Map, Value, json};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// The values of header `name`, joined with `, `.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }
}

/// The echo server; it lives as long as the test process (its thread only accepts).
pub struct Upstream {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Upstream {
    /// Starts the echo server on a free loopback port.
    ///
    /// Answers `200` with `{"method", "path", "headers", "body"}`; a request header
    /// `x-echo-status: N` makes it answer `N`, `x-echo-size: N` answer N bytes of `a` instead,
    /// `x-echo-raw: 1` answer the request's own body with its content type (a model's answer,
    /// say).
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo upstream");
        let port = listener.local_addr().expect("upstream address").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = Arc::clone(&log);
                thread::spawn(move || serve(stream, &log));
            }
        });
        Upstream { port, received }
    }

    /// Every request received so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("upstream log").clone()
    }

    /// The last request received.
    pub fn last(&self) -> Received {
        self.received()
            .pop()
            .expect("the upstream received no request")
    }
}

fn serve(mut stream: TcpStream, log: &Mutex<Vec<Received>>) {
    let _ = stream.set_nodelay(true);
    let mut reader = match stream.try_clone() {
        Ok(s) => std::io::BufReader::new(s),
        Err(_) => return,
    };
    while let Ok(Some(Message {
        start,
        headers,
        body,
    })) = read_message(&mut reader)
    {
        let mut parts = start.split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let request = Received {
            method,
            path,
            headers,
            body,
        };
        let status: u16 = request
            .header("x-echo-status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        let close = request
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let mut headers = Map::new();
        for (name, _) in &request.headers {
            headers.insert(name.clone(), json!(request.header(name)));
        }
        let raw = request.header("x-echo-raw").is_some();
        let content_type = match request.header("content-type") {
            Some(t) if raw => t,
            _ => "application/json".to_owned(),
        };
        let echo = match request.header("x-echo-size").and_then(|n| n.parse().ok()) {
            Some(size) => "a".repeat(size),
            None if raw => String::from_utf8_lossy(&request.body).into_owned(),
            None => json!({
                "method": request.method,
                "path": request.path,
                "headers": Value::Object(headers),
                "body": String::from_utf8_lossy(&request.body),
            })
            .to_string(),
        };
        log.lock().expect("upstream log").push(request);
        let response = format!(
            "HTTP/1.1 {status} Echo\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nx-upstream: echo\r\n\r\n{echo}",
            echo.len()
        );
        if stream.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}
