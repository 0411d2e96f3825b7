//! The UDP side of the embedded server, where every client query arrives: one socket per core on
//! the same port (SO_REUSEPORT, the kernel spreads clients across them), each read by its own
//! thread with blocking calls, and a per-thread cache of encoded answers keyed by the request's
//! bytes after its id. A cached answer is only copied, its id replaced; the zone's serial, read
//! without a lock, empties a cache as soon as any record changes. Nothing is shared between
//! the threads on the way from request to answer.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// What the workers need from the server: an answer for raw request bytes, and a number that
/// rises whenever answers may change.
pub(super) trait Responder: Send + Sync + 'static {
    fn generation(&self) -> u64;
    fn respond(&self, request: &[u8]) -> Option<Vec<u8>>;
}

/// Bound on each thread's cache. A flood of distinct questions (random names) empties it rather
/// than growing it; those questions are answered on the slow path.
const MAX_CACHED: usize = 4096;

/// Larger requests (long EDNS options) are answered without being cached, so that a cache holds
/// at most about `MAX_CACHED` × (this + an answer) bytes.
const MAX_CACHED_REQUEST: usize = 512;

/// How often a blocked read wakes to notice a stop.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// One socket per available core.
pub(super) fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(16))
}

/// `count` UDP sockets on `addr`, sharing it.
pub(super) fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<UdpSocket>> {
    (0..count)
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_reuse_port(true)?;
            socket.bind(&addr.into())?;
            socket.set_read_timeout(Some(STOP_CHECK))?;
            Ok(socket.into())
        })
        .collect()
}

pub(super) struct Workers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    pub(super) fn start(sockets: Vec<UdpSocket>, responder: Arc<dyn Responder>) -> Workers {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = sockets
            .into_iter()
            .enumerate()
            .map(|(i, socket)| {
                let (stop, responder) = (stop.clone(), responder.clone());
                std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || serve(&socket, &*responder, &stop))
                    .expect("spawn a DNS thread")
            })
            .collect();
        Workers { stop, threads }
    }

    /// Stops the threads and waits until their sockets are closed.
    pub(super) async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(socket: &UdpSocket, responder: &dyn Responder, stop: &AtomicBool) {
    let mut request = [0u8; 4096];
    let mut cache = Cache::default();
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, peer)) = socket.recv_from(&mut request) else {
            continue; // the stop check's timeout, or a transient error (e.g. ICMP unreachable)
        };
        if let Some(answer) = cache.answer(responder, &request[..len]) {
            let _ = socket.send_to(answer, peer);
        }
    }
}

#[derive(Default)]
struct Cache {
    generation: u64,
    /// Request bytes after the id → the full answer (its id is replaced on use).
    answers: HashMap<Box<[u8]>, Box<[u8]>>,
    out: Vec<u8>,
}

impl Cache {
    fn answer(&mut self, responder: &dyn Responder, request: &[u8]) -> Option<&[u8]> {
        // A header, and a query (QR clear): anything else is dropped, as before.
        if request.len() < 12 || request[2] & 0x80 != 0 {
            return None;
        }
        // Read before answering: a change after this read empties the cache on the next query.
        let generation = responder.generation();
        if generation != self.generation {
            self.answers.clear();
            self.generation = generation;
        }
        let key = &request[2..];
        self.out.clear();
        match self.answers.get(key) {
            Some(answer) => {
                self.out.extend_from_slice(&request[..2]);
                self.out.extend_from_slice(&answer[2..]);
            }
            None => {
                let answer = responder.respond(request)?;
                if request.len() <= MAX_CACHED_REQUEST {
                    if self.answers.len() >= MAX_CACHED {
                        self.answers.clear();
                    }
                    self.answers.insert(key.into(), answer.as_slice().into());
                }
                self.out = answer;
            }
        }
        Some(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    /// Answers with the generation in the last byte, counting how often it was asked.
    #[derive(Default)]
    struct Counting {
        generation: AtomicU64,
        asked: AtomicU64,
    }

    impl Responder for Counting {
        fn generation(&self) -> u64 {
            self.generation.load(Ordering::Relaxed)
        }
        fn respond(&self, request: &[u8]) -> Option<Vec<u8>> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            let mut answer = request.to_vec();
            answer[2] |= 0x80;
            answer.push(self.generation() as u8);
            Some(answer)
        }
    }

    fn query(id: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[
            0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4, b'd', b'e', b'm', b'o', 0,
        ]);
        q
    }

    #[test]
    fn a_cached_answer_carries_the_new_id_and_a_change_empties_the_cache() {
        let responder = Counting::default();
        let mut cache = Cache::default();
        let first = cache.answer(&responder, &query(1)).unwrap().to_vec();
        let second = cache.answer(&responder, &query(2)).unwrap().to_vec();
        assert_eq!(
            responder.asked.load(Ordering::Relaxed),
            1,
            "the second came from the cache"
        );
        assert_eq!(&second[..2], &2u16.to_be_bytes(), "with its own id");
        assert_eq!(first[2..], second[2..]);

        responder.generation.store(1, Ordering::Relaxed);
        let after = cache.answer(&responder, &query(3)).unwrap().to_vec();
        assert_eq!(
            responder.asked.load(Ordering::Relaxed),
            2,
            "a change is never served stale"
        );
        assert_eq!(*after.last().unwrap(), 1);
    }

    #[test]
    fn large_requests_are_answered_but_not_cached() {
        let responder = Counting::default();
        let mut cache = Cache::default();
        let mut large = query(1);
        large.resize(MAX_CACHED_REQUEST + 1, 0);
        for _ in 0..2 {
            assert!(cache.answer(&responder, &large).is_some());
        }
        assert_eq!(responder.asked.load(Ordering::Relaxed), 2);
        assert!(cache.answers.is_empty());
    }

    #[test]
    fn responses_and_short_packets_are_dropped() {
        let responder = Counting::default();
        let mut cache = Cache::default();
        let mut response = query(1);
        response[2] |= 0x80;
        assert!(cache.answer(&responder, &response).is_none());
        assert!(cache.answer(&responder, &[0; 11]).is_none());
        assert_eq!(responder.asked.load(Ordering::Relaxed), 0);
    }
}
