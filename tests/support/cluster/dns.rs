//! Consul's DNS interface for the cluster's containers: `<service>.service.consul` and
//! `<tag>.<service>.service.consul` answer A records of the instances whose checks pass, as a
//! Consul agent does (docs/services/discovery/dns-static-lookups.mdx); other names are
//! NXDOMAIN. Tasks reach it as a host configured to forward `.consul` to Consul would.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::ControlPlane;

pub struct ConsulDns {
    pub address: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConsulDns {
    /// Serves on `ip:53` (docker's `--dns` takes an address only).
    pub fn start(ip: &str, plane: Arc<dyn ControlPlane>) -> ConsulDns {
        let socket = UdpSocket::bind((ip, 53)).unwrap_or_else(|e| panic!("binding Consul's DNS on {ip}:53: {e}"));
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("consul-dns".into())
                .spawn(move || {
                    let mut buffer = [0u8; 512];
                    while !stop.load(Ordering::SeqCst) {
                        let Ok((len, from)) = socket.recv_from(&mut buffer) else { continue };
                        if let Some(reply) = answer(&buffer[..len], plane.as_ref()) {
                            let _ = socket.send_to(&reply, from);
                        }
                    }
                })
                .unwrap()
        };
        ConsulDns { address: ip.to_string(), stop, thread: Some(thread) }
    }
}

impl Drop for ConsulDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The name and type of a query's first question, and where the question ends.
fn question(packet: &[u8]) -> Option<(String, u16, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *packet.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(packet.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
    Some((labels.join("."), qtype, at + 4))
}

/// Addresses for a `.service.consul` name; None when the name is not Consul's.
pub fn resolve(name: &str, plane: &dyn ControlPlane) -> Option<Vec<Ipv4Addr>> {
    let service_part = name.trim_end_matches('.').strip_suffix(".service.consul")?;
    let (tag, service) = match service_part.rsplit_once('.') {
        Some((tag, service)) => (Some(tag), service),
        None => (None, service_part),
    };
    let instances = plane.service_instances().remove(service).unwrap_or_default();
    let mut addresses: Vec<Ipv4Addr> = instances
        .iter()
        .filter(|i| i.status == "passing")
        .filter(|i| tag.is_none_or(|t| i.tags.iter().any(|x| x.eq_ignore_ascii_case(t))))
        .filter_map(|i| if i.address.is_empty() { &i.node_address } else { &i.address }.parse().ok())
        .collect();
    addresses.sort();
    addresses.dedup();
    Some(addresses)
}

fn answer(packet: &[u8], plane: &dyn ControlPlane) -> Option<Vec<u8>> {
    if packet.len() < 12 {
        return None;
    }
    let (name, qtype, question_end) = question(packet)?;
    let found = resolve(&name, plane);
    let addresses = match (&found, qtype) {
        (Some(addresses), 1) => addresses.clone(),
        _ => Vec::new(),
    };
    let mut reply = Vec::with_capacity(question_end + addresses.len() * 16);
    reply.extend_from_slice(&packet[..2]);
    // QR, AA, RD copied, RA; NXDOMAIN for names that are not Consul's or have no instance.
    let rcode: u8 = if found.as_ref().is_some_and(|a| !a.is_empty()) { 0 } else { 3 };
    reply.push(0x84 | (packet[2] & 0x01));
    reply.push(0x80 | rcode);
    reply.extend_from_slice(&[0, 1]);
    reply.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(&packet[12..question_end]);
    for address in addresses {
        // A pointer to the question's name, type A, class IN, TTL 0, 4 bytes.
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        reply.extend_from_slice(&address.octets());
    }
    Some(reply)
}
