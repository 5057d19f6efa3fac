//! A test-side TCP proxy between two nodes: passes bytes, or flips one, replays a WebSocket
//! frame, or drops everything (a partition), and keeps a capture of what crossed it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Pass = 0,
    /// Flip one byte of the next server→client chunk, then pass.
    FlipOnce = 1,
    /// Send the next complete server→client WebSocket frame twice, then pass.
    ReplayOnce = 2,
    /// Swallow all bytes in both directions; connections stay open.
    Drop = 3,
}

pub struct Proxy {
    pub addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    mode: Arc<AtomicU8>,
    pub capture: Arc<Mutex<Vec<u8>>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Listens on a free port; the target is set later (nodes start on port 0).
    pub fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let proxy = Proxy {
            addr,
            target: Arc::new(Mutex::new(None)),
            mode: Arc::new(AtomicU8::new(Mode::Pass as u8)),
            capture: Arc::new(Mutex::new(Vec::new())),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (target, mode, capture, conns) =
            (proxy.target.clone(), proxy.mode.clone(), proxy.capture.clone(), proxy.conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Some(to) = *target.lock().expect("lock") else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let Ok(server) = TcpStream::connect(to) else { continue };
                if let Ok(mut c) = conns.lock() {
                    c.extend(client.try_clone().ok());
                    c.extend(server.try_clone().ok());
                }
                pump(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                    mode.clone(),
                    capture.clone(),
                    false,
                );
                pump(server, client, mode.clone(), capture.clone(), true);
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_target(&self, url: &str) {
        let addr = url.trim_start_matches("http://").parse().expect("target address");
        *self.target.lock().expect("lock") = Some(addr);
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            1 => Mode::FlipOnce,
            2 => Mode::ReplayOnce,
            3 => Mode::Drop,
            _ => Mode::Pass,
        }
    }

    pub fn captured(&self) -> Vec<u8> {
        self.capture.lock().expect("lock").clone()
    }

    /// Cuts every connection open through the proxy.
    pub fn cut(&self) {
        for c in self.conns.lock().expect("lock").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Length of the first complete WebSocket frame in `buf`, if one is there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, header) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let total = header + if masked { 4 } else { 0 } + len;
    (buf.len() >= total).then_some(total)
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    mode: Arc<AtomicU8>,
    capture: Arc<Mutex<Vec<u8>>>,
    server_to_client: bool,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        let _ = from.set_read_timeout(Some(Duration::from_secs(600)));
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut chunk = buf[..n].to_vec();
            if let Ok(mut c) = capture.lock() {
                c.extend_from_slice(&chunk);
            }
            let current = mode.load(Ordering::SeqCst);
            if current == Mode::Drop as u8 {
                continue;
            }
            if server_to_client && current == Mode::FlipOnce as u8 && chunk.len() > 8 {
                let last = chunk.len() - 1;
                chunk[last] ^= 0x01;
                mode.store(Mode::Pass as u8, Ordering::SeqCst);
            }
            if server_to_client && current == Mode::ReplayOnce as u8 {
                pending.extend_from_slice(&chunk);
                // Forward whole frames; the first complete binary frame goes out twice.
                while let Some(len) = frame_len(&pending) {
                    let frame: Vec<u8> = pending.drain(..len).collect();
                    if to.write_all(&frame).is_err() {
                        return;
                    }
                    if frame[0] & 0x0f == 0x2 && mode.load(Ordering::SeqCst) == Mode::ReplayOnce as u8 {
                        let _ = to.write_all(&frame);
                        mode.store(Mode::Pass as u8, Ordering::SeqCst);
                    }
                }
                continue;
            }
            if !pending.is_empty() {
                chunk = [std::mem::take(&mut pending), chunk].concat();
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
