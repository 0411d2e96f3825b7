//! Serves a [`Zone`] over UDP and TCP as an authoritative-only server: no recursion, REFUSED for
//! names outside the zone, for zone transfers and for dynamic updates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType as HickoryType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo, Server};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::TcpListener;
use valkey_dr_core::RecordType;

use super::udp;
use super::zone::{Lookup, Zone};
use crate::wire::to_records;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen for DNS on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The source hickory's `Request` records; answers never depend on it.
const REQUEST_SOURCE: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    53,
));

/// Largest UDP payload we answer with, whatever a client advertises (the DNS flag day value).
const MAX_UDP_PAYLOAD: u16 = 1232;

/// Answers one raw DNS request the way the server answers it over UDP, without a socket: parse,
/// decide, encode. Returns None for bytes that are not a DNS request (the server drops those).
/// For tests and fuzzing.
pub fn respond(zone: Arc<Zone>, request: &[u8], negative_ttl: u32) -> Option<Vec<u8>> {
    Handler::new(zone, &[("ns".into(), REQUEST_SOURCE.ip())], negative_ttl).udp_response(request)
}

pub struct DnsServer {
    /// TCP, through hickory-server.
    server: Server<Tcp>,
    /// UDP, on one socket and thread per core (see [`udp`]).
    udp: udp::Workers,
    local_addr: SocketAddr,
}

impl DnsServer {
    /// Binds UDP and TCP on `listen` (port 0 picks one free port for both) and starts serving.
    pub async fn start(
        zone: Arc<Zone>,
        listen: SocketAddr,
        negative_ttl: u32,
    ) -> Result<DnsServer, ServerError> {
        DnsServer::start_with_name_servers(zone, listen, negative_ttl, &[]).await
    }

    /// [`DnsServer::start`], naming the zone's other name servers too (`<label>.<zone>` with
    /// its address): every controller of the highly available shape serves the same NS set.
    /// This server is `ns.<zone>` unless `others` names its address.
    pub async fn start_with_name_servers(
        zone: Arc<Zone>,
        listen: SocketAddr,
        negative_ttl: u32,
        others: &[(String, std::net::IpAddr)],
    ) -> Result<DnsServer, ServerError> {
        let bind_error = |source| ServerError::Bind {
            addr: listen,
            source,
        };
        // TCP first and exclusively: it holds the port, so the UDP sockets, which share it among
        // themselves (SO_REUSEPORT), can never join another process's. Port 0 asks for any free
        // port, which must then be free for UDP too: try a few.
        let attempts = if listen.port() == 0 { 20 } else { 1 };
        let mut attempt = 0;
        let (udp, tcp, local_addr) = loop {
            attempt += 1;
            let tcp = TcpListener::bind(listen).await.map_err(bind_error)?;
            let local_addr = tcp.local_addr().map_err(bind_error)?;
            match udp::bind(local_addr, udp::threads()) {
                Ok(udp) => break (udp, tcp, local_addr),
                Err(e) if attempt < attempts && e.kind() == std::io::ErrorKind::AddrInUse => {}
                Err(e) => return Err(bind_error(e)),
            }
        };
        // This server first (the SOA names it), then the others.
        let mut name_servers: Vec<(String, std::net::IpAddr)> = others
            .iter()
            .filter(|(_, ip)| *ip == local_addr.ip())
            .cloned()
            .collect();
        if name_servers.is_empty() {
            name_servers.push(("ns".into(), local_addr.ip()));
        }
        name_servers.extend(
            others
                .iter()
                .filter(|(_, ip)| *ip != local_addr.ip())
                .cloned(),
        );
        let handler = Arc::new(Handler::new(zone, &name_servers, negative_ttl));
        let udp = udp::Workers::start(udp, handler.clone());
        let mut server = Server::new(Tcp(handler));
        server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
        Ok(DnsServer {
            server,
            udp,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub async fn shutdown(mut self) {
        self.udp.stop().await;
        let _ = self.server.shutdown_gracefully().await;
    }
}

impl udp::Responder for Handler {
    fn generation(&self) -> u64 {
        // A copy going stale or current again changes every answer, as a new serial does.
        u64::from(self.zone.serial()) | (u64::from(!self.zone.is_current()) << 32)
    }

    fn respond(&self, request: &[u8]) -> Option<Vec<u8>> {
        self.udp_response(request)
    }
}

/// The handler as hickory-server's TCP transport calls it.
struct Tcp(Arc<Handler>);

/// Our OPT record in answer to a client's: the payload size we send, bounded.
fn our_edns(theirs: &Edns) -> Edns {
    let mut ours = Edns::new();
    ours.set_max_payload(theirs.max_payload().clamp(512, MAX_UDP_PAYLOAD));
    ours
}

struct Handler {
    zone: Arc<Zone>,
    /// The zone's name servers with their addresses; the first is this server (the SOA's MNAME).
    name_servers: Vec<(Name, std::net::IpAddr)>,
    negative_ttl: u32,
}

struct Answer {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
}

impl Answer {
    fn refused() -> Self {
        Self::error(ResponseCode::Refused)
    }
    fn error(code: ResponseCode) -> Self {
        Answer {
            code,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
        }
    }
}

impl Handler {
    /// The UDP answer to raw request bytes, truncated (TC) when it would not fit the client's
    /// payload size; None for bytes that are not a DNS request.
    fn udp_response(&self, request: &[u8]) -> Option<Vec<u8>> {
        let request = Request::from_bytes(
            request.to_vec(),
            REQUEST_SOURCE,
            hickory_server::net::xfer::Protocol::Udp,
        )
        .ok()?;
        let limit = match &request.edns {
            Some(edns) => edns.max_payload().clamp(512, MAX_UDP_PAYLOAD),
            None => 512,
        };
        let answer = self.answer(&request);
        let full = self.encode(&request, answer)?;
        if full.len() <= usize::from(limit) {
            return Some(full);
        }
        let mut truncated = Message::from_vec(&full).ok()?;
        truncated.metadata.truncation = true;
        truncated.answers.clear();
        truncated.authorities.clear();
        truncated.to_vec().ok()
    }

    /// The response message, as the TCP path builds it through hickory-server.
    fn encode(&self, request: &Request, answer: Answer) -> Option<Vec<u8>> {
        let mut response = Message::new(
            request.metadata.id,
            MessageType::Response,
            request.metadata.op_code,
        );
        response.metadata = self.response_metadata(request, &answer);
        response.add_queries(
            request
                .queries
                .queries()
                .iter()
                .map(|q| q.original().clone()),
        );
        response.add_answers(answer.answers);
        response.add_authorities(answer.authorities);
        response.edns = request.edns.as_ref().map(our_edns);
        response.to_vec().ok()
    }

    fn response_metadata(&self, request: &Request, answer: &Answer) -> Metadata {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = answer.authoritative;
        metadata.recursion_available = false;
        metadata.response_code = answer.code;
        metadata
    }

    fn new(
        zone: Arc<Zone>,
        name_servers: &[(String, std::net::IpAddr)],
        negative_ttl: u32,
    ) -> Handler {
        let name_servers = name_servers
            .iter()
            .map(|(label, ip)| {
                let name = Name::from_ascii(format!("{label}.{}", zone.origin()))
                    .expect("validated name server label");
                (name.to_lowercase(), *ip)
            })
            .collect();
        Handler {
            zone,
            name_servers,
            negative_ttl,
        }
    }

    fn primary_ns(&self) -> Name {
        self.name_servers[0].0.clone()
    }

    fn origin(&self) -> Name {
        Name::from_ascii(self.zone.origin()).expect("valid zone name")
    }

    fn soa(&self) -> Record {
        let rdata = SOA::new(
            self.primary_ns(),
            Name::from_ascii(format!("hostmaster.{}", self.zone.origin()))
                .expect("valid zone name"),
            self.zone.serial(),
            60,
            10,
            3600,
            self.negative_ttl,
        );
        Record::from_rdata(self.origin(), self.negative_ttl, RData::SOA(rdata))
    }

    fn answer(&self, request: &Request) -> Answer {
        match request.metadata.op_code {
            OpCode::Query => {}
            // Dynamic updates, NOTIFY and anything else: this server's data comes only from the controller.
            _ => return Answer::refused(),
        }
        let [query] = request.queries.queries() else {
            return Answer::error(ResponseCode::FormErr);
        };
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
            return Answer::refused();
        }
        let qtype = query.query_type();
        if matches!(qtype, HickoryType::AXFR | HickoryType::IXFR) {
            return Answer::refused();
        }
        let name = Name::from(query.name()).to_lowercase();
        let name_text = name.to_ascii();
        let name_text = if name_text.ends_with('.') {
            name_text
        } else {
            format!("{name_text}.")
        };
        let apex = name_text == self.zone.origin();
        let mut answer = Answer {
            code: ResponseCode::NoError,
            authoritative: true,
            answers: Vec::new(),
            authorities: Vec::new(),
        };
        if apex && matches!(qtype, HickoryType::SOA | HickoryType::NS) {
            match qtype {
                HickoryType::SOA => answer.answers.push(self.soa()),
                _ => answer
                    .answers
                    .extend(self.name_servers.iter().map(|(ns, _)| {
                        Record::from_rdata(self.origin(), 3600, RData::NS(NS(ns.clone())))
                    })),
            }
            return answer;
        }
        if let Some((ns, ns_ip)) = self.name_servers.iter().find(|(ns, _)| *ns == name)
            && matches!(qtype, HickoryType::A | HickoryType::AAAA)
        {
            let (ns, ns_ip) = (ns.clone(), *ns_ip);
            let rdata = match ns_ip {
                std::net::IpAddr::V4(ip) if qtype == HickoryType::A => Some(RData::A(A(ip))),
                std::net::IpAddr::V6(ip) if qtype == HickoryType::AAAA => {
                    Some(RData::AAAA(AAAA(ip)))
                }
                _ => None,
            };
            answer
                .answers
                .extend(rdata.map(|r| Record::from_rdata(ns.clone(), 3600, r)));
            if answer.answers.is_empty() {
                answer.authorities.push(self.soa());
            }
            return answer;
        }
        if !self.zone.is_current() {
            // A copy not loaded yet knows nothing, one whose source went silent may be stale:
            // another name server may know.
            return Answer::error(ResponseCode::ServFail);
        }
        let rtype = match qtype {
            HickoryType::A => Some(RecordType::A),
            HickoryType::AAAA => Some(RecordType::Aaaa),
            HickoryType::CNAME => Some(RecordType::Cname),
            HickoryType::TXT => Some(RecordType::Txt),
            HickoryType::ANY => None,
            // Types this zone never holds: answer NODATA/NXDOMAIN for the name.
            _ => Some(RecordType::Txt).filter(|_| false),
        };
        let lookup = if rtype.is_none() && qtype != HickoryType::ANY {
            match self.zone.lookup(&name_text, Some(RecordType::Txt)) {
                Lookup::NotInZone => Lookup::NotInZone,
                Lookup::NxDomain => Lookup::NxDomain,
                _ => Lookup::NoData,
            }
        } else {
            self.zone.lookup(&name_text, rtype)
        };
        match lookup {
            Lookup::NotInZone => return Answer::refused(),
            Lookup::Answer(sets) => answer.answers = sets.iter().flat_map(to_records).collect(),
            Lookup::NoData => answer.authorities.push(self.soa()),
            Lookup::NxDomain => {
                answer.code = ResponseCode::NXDomain;
                answer.authorities.push(self.soa());
            }
        }
        answer
    }
}

#[async_trait::async_trait]
impl RequestHandler for Tcp {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let handler = &self.0;
        let answer = handler.answer(request);
        let edns = request.edns.as_ref().map(our_edns);
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let metadata = handler.response_metadata(request, &answer);
        let response = builder.build(
            metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::warn!(%error, "failed to send DNS response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
