//! A stub resolver pointed at one server, as a client of the global name would use.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};

#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {name} at {server}: {reason}")]
pub struct ResolveError {
    pub name: String,
    pub server: SocketAddr,
    pub reason: String,
}

/// Resolves names through one DNS server, without caching: callers decide when to ask again.
pub struct StubResolver {
    resolver: TokioResolver,
    server: SocketAddr,
}

impl StubResolver {
    pub fn new(server: SocketAddr) -> StubResolver {
        let mut ns = NameServerConfig::udp_and_tcp(server.ip());
        for connection in &mut ns.connections {
            connection.port = server.port();
        }
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        opts.timeout = Duration::from_millis(500);
        opts.attempts = 2;
        let mut builder = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        );
        *builder.options_mut() = opts;
        StubResolver {
            resolver: builder.build().expect("resolver from a static config"),
            server,
        }
    }

    /// The addresses the name leads to (following CNAMEs) and the smallest TTL on the way.
    pub async fn resolve(&self, name: &str) -> Result<(Vec<IpAddr>, u32), ResolveError> {
        let lookup = self
            .resolver
            .lookup_ip(name)
            .await
            .map_err(|e| ResolveError {
                name: name.to_string(),
                server: self.server,
                reason: e.to_string(),
            })?;
        let ttl = lookup
            .as_lookup()
            .answers()
            .iter()
            .map(|r| r.ttl)
            .min()
            .unwrap_or(0);
        Ok((lookup.iter().collect(), ttl))
    }
}
