//! A hostile HTTP server: it answers every request in one bad way, to show that pgnomad's
//! clients fail with a clear error naming the endpoint — never a panic, never a hang.
//!
//! ```ignore
//! let server = Hostile::start(Answer::Truncated);
//! std::env::set_var("NOMAD_ADDR", server.address());   // or pass it to a client
//! server.requests();                                    // "GET /v1/jobs", in order
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How every request is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200 with a `Content-Length` of twice what is sent, then the connection is closed.
    Truncated,
    /// 200 with a body that never stops (spaces inside a JSON array), sent as fast as the
    /// client reads it, until the client goes away.
    Oversized,
    /// 200 with well-formed JSON of the wrong type: a number where objects, lists and
    /// strings are expected.
    WronglyTyped,
    /// 200 with headers, then one byte of a body every 200 ms, never finishing.
    Slow,
    /// The request is read and never answered.
    Silent,
    /// 200 with this body, as it is.
    Body(String),
}

pub struct Hostile {
    address: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Hostile {
    pub fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port");
        let address = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (answer, seen, stopped) = (answer.clone(), seen.clone(), stopped.clone());
                        std::thread::spawn(move || serve(stream, &answer, &seen, &stopped));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => break,
                }
            }
        });
        Hostile { address, requests, stop }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        self.address.clone()
    }

    /// `host:port`, as the dev Patroni client takes it.
    pub fn socket(&self) -> String {
        self.address.trim_start_matches("http://").to_string()
    }

    /// The request lines received, as `GET /v1/jobs`.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads one request (head and `Content-Length` body); returns its request line, and whether
/// the client wants the connection closed after the answer (HTTP/1.0, `Connection: close`).
fn read_request(stream: &mut TcpStream) -> Option<(String, bool)> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&chunk[..n]);
    }
    let line = head.lines().next().unwrap_or_default();
    let close = line.ends_with("HTTP/1.0") || head.to_ascii_lowercase().contains("\r\nconnection: close");
    Some((line.rsplit_once(' ').map_or(line, |(l, _)| l).split('?').next().unwrap_or_default().to_string(), close))
}

fn serve(mut stream: TcpStream, answer: &Answer, seen: &Mutex<Vec<String>>, stop: &AtomicBool) {
    // HTTP/1.1 keep-alive: answer as many requests as the client sends on this connection.
    while let Some((line, close)) = read_request(&mut stream) {
        seen.lock().unwrap().push(line);
        let head = |length: Option<usize>| {
            let length = length.map(|n| format!("Content-Length: {n}\r\n")).unwrap_or_default();
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Nomad-Index: 7\r\n{length}\r\n")
        };
        let result = match answer {
            Answer::Truncated => {
                let body = br#"[{"ID": "main-postgres", "Name": "main-postgres", "Status": "running"}"#;
                let _ = stream.write_all(head(Some(body.len() * 2)).as_bytes());
                let _ = stream.write_all(body);
                return;
            }
            Answer::Oversized => {
                let _ = stream.write_all(head(None).replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n").as_bytes());
                let _ = stream.write_all(b"[");
                let spaces = vec![b' '; 1 << 20];
                while !stop.load(Ordering::SeqCst) && stream.write_all(&spaces).is_ok() {}
                return;
            }
            Answer::WronglyTyped => stream.write_all(format!("{}12345", head(Some(5))).as_bytes()),
            Answer::Slow => {
                let _ = stream.write_all(head(Some(1 << 20)).as_bytes());
                while !stop.load(Ordering::SeqCst) && stream.write_all(b" ").is_ok() {
                    std::thread::sleep(Duration::from_millis(200));
                }
                return;
            }
            Answer::Silent => {
                while !stop.load(Ordering::SeqCst) {
                    // Until the client gives up and closes (a read of 0), or the server stops.
                    stream.set_read_timeout(Some(Duration::from_millis(200))).ok();
                    match stream.read(&mut [0u8; 64]) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                        Err(_) => return,
                    }
                }
                return;
            }
            Answer::Body(body) => stream.write_all(format!("{}{body}", head(Some(body.len()))).as_bytes()),
        };
        if result.is_err() || close {
            return;
        }
    }
}
