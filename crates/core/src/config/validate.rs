//! Validation: every error names the field and says how to fix it.

use super::*;

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_label("owner", &self.owner, false)?;
        if self.regions.len() < 2 {
            return Err(ConfigError::invalid(
                "regions",
                format!(
                    "{} region(s) configured, at least 2 are needed",
                    self.regions.len()
                ),
                "add a [[regions]] table for each region (2 or 3)",
            ));
        }
        if self.regions.len() > MAX_REGIONS {
            return Err(ConfigError::invalid(
                "regions",
                format!(
                    "{} regions configured, at most {MAX_REGIONS} are supported",
                    self.regions.len()
                ),
                "remove regions until at most 3 remain",
            ));
        }
        let mut region_names = BTreeSet::new();
        let mut addresses: BTreeMap<Endpoint, String> = BTreeMap::new();
        for (r, region) in self.regions.iter().enumerate() {
            let field = format!("regions[{r}].name");
            validate_label(&field, &region.name, false)?;
            if !region_names.insert(region.name.as_str()) {
                return Err(ConfigError::invalid(
                    field,
                    format!("duplicate region \"{}\"", region.name),
                    "give every region a unique name",
                ));
            }
            if region.nodes.is_empty() {
                return Err(ConfigError::invalid(
                    format!("regions[{r}].nodes"),
                    format!("region \"{}\" has no nodes", region.name),
                    "add at least one [[regions.nodes]] entry with host and port",
                ));
            }
            for (n, node) in region.nodes.iter().enumerate() {
                let field = format!("regions[{r}].nodes[{n}]");
                let endpoint = node_endpoint(&field, node)?;
                if let Some(other) = addresses.insert(endpoint.clone(), field.clone()) {
                    return Err(ConfigError::invalid(
                        format!("{field}.host"),
                        format!("{endpoint} is already used by {other}"),
                        "give every node its own host:port",
                    ));
                }
            }
        }
        for (r, region) in self.regions.iter().enumerate() {
            for (n, node) in region.nodes.iter().enumerate() {
                if let Some(address) = &node.controller_address {
                    Endpoint::parse(address).map_err(|problem| {
                        ConfigError::invalid(
                            format!("regions[{r}].nodes[{n}].controller_address"),
                            problem,
                            "write the address as \"host:port\"",
                        )
                    })?;
                }
                for (from, address) in &node.replication_address {
                    let field = format!("regions[{r}].nodes[{n}].replication_address.{from}");
                    if !region_names.contains(from.as_str()) || from == &region.name {
                        return Err(ConfigError::invalid(
                            field,
                            format!("\"{from}\" is not another configured region"),
                            "key each replication address by the name of the region that uses it",
                        ));
                    }
                    Endpoint::parse(address).map_err(|problem| {
                        ConfigError::invalid(field, problem, "write the address as \"host:port\"")
                    })?;
                }
            }
        }
        if self.primary_region.is_empty() {
            return Err(ConfigError::invalid(
                "primary_region",
                "no primary region given",
                "set primary_region to the name of the region that holds the writer",
            ));
        }
        if !region_names.contains(self.primary_region.as_str()) {
            return Err(ConfigError::invalid(
                "primary_region",
                format!("\"{}\" is not a configured region", self.primary_region),
                format!(
                    "use one of: {}",
                    region_names.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        self.validate_dns()?;
        self.validate_controller()?;
        self.validate_coordination()?;
        self.validate_mode()?;
        self.validate_http()?;
        self.validate_webhooks()?;
        self.validate_security()
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        let Some(http) = &self.http else {
            return Ok(());
        };
        let listen: std::net::SocketAddr = http.listen.parse().map_err(|_| {
            ConfigError::invalid(
                "http.listen",
                format!("\"{}\" is not ip:port", http.listen),
                "write e.g. 127.0.0.1:9187",
            )
        })?;
        if http.tls_cert_file.is_some() != http.tls_key_file.is_some() {
            return Err(ConfigError::invalid(
                "http.tls_cert_file",
                "a certificate without a key, or a key without a certificate",
                "set both tls_cert_file and tls_key_file, or neither",
            ));
        }
        if !listen.ip().is_loopback() && (http.token_file.is_none() || http.tls_cert_file.is_none())
        {
            return Err(ConfigError::invalid(
                "http.listen",
                format!("{listen} is reachable from other hosts without a token and TLS"),
                "set http.token_file and http.tls_cert_file/tls_key_file, or listen on 127.0.0.1",
            ));
        }
        Ok(())
    }

    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        for (i, hook) in self.webhooks.iter().enumerate() {
            if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
                return Err(ConfigError::invalid(
                    format!("webhooks[{i}].url"),
                    format!("\"{}\" is not an http(s) URL", hook.url),
                    "write e.g. https://alerts.example.com/valkey-dr",
                ));
            }
        }
        Ok(())
    }

    fn validate_security(&self) -> Result<(), ConfigError> {
        validate_client_identity("tls", self.tls.as_ref())?;
        if let Some(auth) = &self.auth {
            if auth.password.is_some() {
                return Err(ConfigError::invalid(
                    "auth.password",
                    "a literal password in the config would end up in backups and diffs",
                    "put it in a file (password_file, mode 0600) or an environment variable (password_env)",
                ));
            }
            match (&auth.password_file, &auth.password_env) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(ConfigError::invalid(
                        "auth.password_file",
                        "exactly one source of the password is needed",
                        "set either password_file or password_env",
                    ));
                }
            }
            if let Some(user) = &auth.username
                && (user.is_empty() || user.chars().any(|c| c.is_whitespace()))
            {
                return Err(ConfigError::invalid(
                    "auth.username",
                    "an ACL user name cannot be empty or contain spaces",
                    "use the name of the ACL user (or remove it for the default user)",
                ));
            }
        }
        Ok(())
    }

    fn validate_dns(&self) -> Result<(), ConfigError> {
        validate_dns_name("dns.zone", &self.dns.zone)?;
        validate_dns_name("dns.global_name", &self.dns.global_name)?;
        let zone = fqdn(&self.dns.zone);
        let global = self.global_name_fqdn();
        if !global.ends_with(&format!(".{zone}")) {
            return Err(ConfigError::invalid(
                "dns.global_name",
                format!("\"{global}\" is not inside zone \"{zone}\""),
                "use a name relative to the zone (e.g. \"demo\") or a name ending in the zone",
            ));
        }
        if self.dns.ttl == 0 {
            return Err(ConfigError::invalid(
                "dns.ttl",
                "TTL 0 makes resolvers query on every connection and is not cached consistently",
                "set a TTL of at least 1 second (5 is a good default)",
            ));
        }
        match &self.dns.provider {
            DnsProviderConfig::Embedded { listen } => {
                listen.parse::<std::net::SocketAddr>().map_err(|_| {
                    ConfigError::invalid(
                        "dns.provider.listen",
                        format!("\"{listen}\" is not an IP:port socket address"),
                        "write it like \"127.0.0.1:5353\"",
                    )
                })?;
            }
            DnsProviderConfig::Rfc2136(rfc2136) => self.validate_rfc2136(rfc2136)?,
        }
        Ok(())
    }

    fn validate_rfc2136(&self, c: &Rfc2136Config) -> Result<(), ConfigError> {
        if c.servers.is_empty() {
            return Err(ConfigError::invalid(
                "dns.provider.servers",
                "no server to send updates to",
                "list the zone's primary server, e.g. servers = [\"192.0.2.53:53\"]",
            ));
        }
        for server in &c.servers {
            server.parse::<std::net::SocketAddr>().map_err(|_| {
                ConfigError::invalid(
                    "dns.provider.servers",
                    format!("\"{server}\" is not an IP:port socket address"),
                    "write it like \"192.0.2.53:53\" (the primary server's address, not its name)",
                )
            })?;
        }
        validate_dns_name("dns.provider.tsig_key_name", &c.tsig_key_name)?;
        if c.tsig_secret.is_some() {
            return Err(ConfigError::invalid(
                "dns.provider.tsig_secret",
                "a literal TSIG secret in the config would end up in backups and diffs",
                "put it in a file (tsig_secret_file, mode 0600) or an environment variable (tsig_secret_env)",
            ));
        }
        if c.tsig_secret_file.is_some() == c.tsig_secret_env.is_some() {
            return Err(ConfigError::invalid(
                "dns.provider.tsig_secret_file",
                "exactly one source of the TSIG secret is needed",
                "set either tsig_secret_file or tsig_secret_env",
            ));
        }
        if !(100..=60_000).contains(&c.timeout_ms) {
            return Err(ConfigError::invalid(
                "dns.provider.timeout_ms",
                format!("{} ms is outside 100–60000", c.timeout_ms),
                "use a limit a little above the server's round trip, e.g. 2000",
            ));
        }
        if self.coordination.is_some() {
            return Err(ConfigError::invalid(
                "dns.provider.kind",
                "the highly available shape serves the records from every controller; RFC 2136 is supported with one controller",
                "remove [coordination], or use kind = \"embedded\"",
            ));
        }
        Ok(())
    }

    fn validate_mode(&self) -> Result<(), ConfigError> {
        if self.mode != Mode::Cluster {
            return Ok(());
        }
        // The name gives cluster clients addresses to start from, not ports.
        let first_port = self
            .regions
            .iter()
            .flat_map(|r| &r.nodes)
            .map(|n| n.port)
            .next();
        for (i, region) in self.regions.iter().enumerate() {
            for (j, node) in region.nodes.iter().enumerate() {
                if Some(node.port) != first_port {
                    return Err(ConfigError::invalid(
                        format!("regions[{i}].nodes[{j}].port"),
                        format!(
                            "{} differs from the first node's {}: in cluster mode the name leads clients to the nodes' addresses, which carry no port",
                            node.port,
                            first_port.unwrap_or_default()
                        ),
                        "run every cluster node on one port (each on its own address)",
                    ));
                }
            }
        }
        // Not served by the cluster's controller yet: refused rather than silently ignored.
        if self.http.is_some() {
            return Err(ConfigError::invalid(
                "http",
                "the cluster's controller serves no HTTP endpoint yet",
                "remove [http] (use `valkey-dr status` and the event log), or set mode = \"replication\"",
            ));
        }
        Ok(())
    }

    fn validate_coordination(&self) -> Result<(), ConfigError> {
        let Some(c) = &self.coordination else {
            return Ok(());
        };
        if c.etcd.is_empty() {
            return Err(ConfigError::invalid(
                "coordination.etcd",
                "no etcd member is listed",
                "list the client URLs of every etcd member, e.g. [\"http://10.0.1.5:2379\"]",
            ));
        }
        let scheme = if c.tls.is_some() {
            "https://"
        } else {
            "http://"
        };
        for (i, url) in c.etcd.iter().enumerate() {
            let field = format!("coordination.etcd[{i}]");
            let other = if c.tls.is_some() {
                "http://"
            } else {
                "https://"
            };
            if url.starts_with(other) {
                return Err(ConfigError::invalid(
                    field,
                    format!(
                        "\"{url}\" does not match [coordination.tls] (set: https, unset: http)"
                    ),
                    if c.tls.is_some() {
                        "use https:// URLs, or remove [coordination.tls]"
                    } else {
                        "set [coordination.tls] (ca_file, client_cert_file, client_key_file) for https"
                    },
                ));
            }
            let authority = url.strip_prefix(scheme).unwrap_or("");
            if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
                return Err(ConfigError::invalid(
                    field,
                    format!("\"{url}\" is not an etcd client URL"),
                    format!("write it as {scheme}<host>:<port>"),
                ));
            }
        }
        validate_client_identity("coordination.tls", c.tls.as_ref())?;
        let mut seen = BTreeSet::new();
        for (i, site) in c.sites.iter().enumerate() {
            validate_label(&format!("coordination.sites[{i}]"), site, false)?;
            if !seen.insert(site.as_str()) {
                return Err(ConfigError::invalid(
                    format!("coordination.sites[{i}]"),
                    format!("duplicate site \"{site}\""),
                    "list every controller site once",
                ));
            }
        }
        for site in c.name_servers.keys() {
            if !seen.contains(site.as_str()) {
                return Err(ConfigError::invalid(
                    format!("coordination.name_servers.{site}"),
                    format!("\"{site}\" is not one of coordination.sites"),
                    "name the address of each site's DNS server under its site name",
                ));
            }
        }
        if !seen.contains(c.site.as_str()) {
            return Err(ConfigError::invalid(
                "coordination.site",
                format!("\"{}\" is not one of coordination.sites", c.site),
                "add it to coordination.sites or fix the name",
            ));
        }
        // A region's controller guards its writer only if its site carries the region's name; a
        // typo would leave the region unguarded without a word.
        for (i, region) in self.regions.iter().enumerate() {
            if !seen.contains(region.name.as_str()) {
                return Err(ConfigError::invalid(
                    "coordination.sites",
                    format!(
                        "region \"{}\" (regions[{i}]) has no site of its name, so nothing would fence its writer when it is cut off",
                        region.name
                    ),
                    "name each region's controller site exactly like the region, plus a witness",
                ));
            }
        }
        if c.sites.len() < 3 {
            return Err(ConfigError::invalid(
                "coordination.sites",
                format!(
                    "{} site(s): a majority of two is both of them",
                    c.sites.len()
                ),
                "run a controller in three failure domains (each region and a witness)",
            ));
        }
        if !(2000..=60_000).contains(&c.lease_ttl_ms) || c.lease_ttl_ms % 1000 != 0 {
            return Err(ConfigError::invalid(
                "coordination.lease_ttl_ms",
                format!(
                    "{} ms is not a whole number of seconds between 2 and 60",
                    c.lease_ttl_ms
                ),
                "use 2000, 3000, … 60000 (etcd leases count whole seconds)",
            ));
        }
        if c.etcd_quota_bytes == Some(0) {
            return Err(ConfigError::invalid(
                "coordination.etcd_quota_bytes",
                "0 bytes is no quota".to_string(),
                "set it to your etcd members' --quota-backend-bytes, or leave it out (2 GiB, etcd's default)",
            ));
        }
        let (earliest, latest) = (c.lease_ttl_ms / 6, c.lease_ttl_ms * 2 / 3);
        if !(earliest..=latest).contains(&c.fence_after_ms()) {
            return Err(ConfigError::invalid(
                "coordination.fence_after_ms",
                format!(
                    "{} ms is outside {earliest}..={latest} ms for lease_ttl_ms = {} (two lease renewals .. two thirds of the lease)",
                    c.fence_after_ms(),
                    c.lease_ttl_ms
                ),
                "use 600 with the 3000 ms default lease, or a value in that range",
            ));
        }
        // The leader checks its lease before each node action and stops a third of a TTL before
        // the lease can expire: an action that passed the check must be over within that margin,
        // or it could reach a node after another controller took over.
        let ctl = &self.controller;
        let action_ms = ctl.connect_timeout_ms + ctl.command_timeout_ms;
        if action_ms > c.lease_ttl_ms / 3 {
            return Err(ConfigError::invalid(
                "controller.command_timeout_ms",
                format!(
                    "connect_timeout_ms + command_timeout_ms = {action_ms} ms is more than a third of coordination.lease_ttl_ms ({} ms): a node action the leader began just before its lease ran out could still land after another controller took over",
                    c.lease_ttl_ms
                ),
                "keep connect_timeout_ms + command_timeout_ms at most lease_ttl_ms / 3 (500 + 500 with the 3000 ms default), or raise coordination.lease_ttl_ms",
            ));
        }
        Ok(())
    }

    fn validate_controller(&self) -> Result<(), ConfigError> {
        let c = &self.controller;
        for (field, value) in [
            ("controller.reconcile_interval_ms", c.reconcile_interval_ms),
            ("controller.connect_timeout_ms", c.connect_timeout_ms),
            ("controller.command_timeout_ms", c.command_timeout_ms),
            ("controller.catchup_timeout_ms", c.catchup_timeout_ms),
            ("controller.down_after_ms", c.down_after_ms),
            ("controller.probe_interval_ms", c.probe_interval_ms),
        ] {
            if value == 0 || value > 600_000 {
                return Err(ConfigError::invalid(
                    field,
                    format!("{value} ms is out of range"),
                    "use a value between 1 and 600000 milliseconds",
                ));
            }
        }
        if c.writer_quorum_max_lag_s > 60 {
            return Err(ConfigError::invalid(
                "controller.writer_quorum_max_lag_s",
                format!("{} s is more than a minute", c.writer_quorum_max_lag_s),
                "use 1 to 60 seconds (2 is the default; 0 turns the writer's self-fence off)",
            ));
        }
        if c.failover_block_ms > 86_400_000 {
            return Err(ConfigError::invalid(
                "controller.failover_block_ms",
                format!("{} ms is more than a day", c.failover_block_ms),
                "use at most 86400000 (0 disables the block)",
            ));
        }
        Ok(())
    }
}

fn node_endpoint(field: &str, node: &NodeConfig) -> Result<Endpoint, ConfigError> {
    if node.host.is_empty() {
        return Err(ConfigError::invalid(
            format!("{field}.host"),
            "empty host",
            "set host to the node's IP address or DNS name",
        ));
    }
    if node.host.parse::<std::net::IpAddr>().is_err() {
        validate_dns_name(&format!("{field}.host"), &node.host)?;
    }
    if node.port == 0 {
        return Err(ConfigError::invalid(
            format!("{field}.port"),
            "port 0 is not a valid Valkey port",
            "set the port the node listens on (usually 6379)",
        ));
    }
    Ok(Endpoint::new(&node.host, node.port))
}

fn validate_dns_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(ConfigError::invalid(
            field,
            format!("\"{name}\" is not a valid DNS name (empty or longer than 253 characters)"),
            "use dot-separated labels of letters, digits and hyphens, e.g. \"valkey-dr.live\"",
        ));
    }
    for label in trimmed.split('.') {
        validate_label(field, label, true)?;
    }
    Ok(())
}

fn validate_label(field: &str, label: &str, allow_underscore: bool) -> Result<(), ConfigError> {
    if is_label(label, allow_underscore) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("\"{label}\" is not a valid DNS label"),
            "use 1-63 letters, digits or hyphens, not starting or ending with a hyphen",
        ))
    }
}

/// A client certificate comes with its key, or neither is set (`section`: where the TLS table is).
fn validate_client_identity(
    section: &str,
    tls: Option<&super::TlsConfig>,
) -> Result<(), ConfigError> {
    match tls {
        Some(tls) if tls.client_cert_file.is_some() != tls.client_key_file.is_some() => {
            Err(ConfigError::invalid(
                format!("{section}.client_cert_file"),
                "a client certificate needs its key and the other way round",
                "set both client_cert_file and client_key_file, or neither",
            ))
        }
        _ => Ok(()),
    }
}
