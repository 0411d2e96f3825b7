//! Starting a cluster controller: its DNS server, control socket and passes.

use super::*;

/// A started cluster controller: its embedded DNS server (unless the records live on the user's
/// server), its control socket and its passes.
pub struct RunningCluster {
    pub controller: Arc<ClusterController>,
    pub dns_addr: Option<std::net::SocketAddr>,
    serving: crate::Serving,
}

impl RunningCluster {
    /// Resolves when a task ends (they loop for the controller's life: it panicked), naming it.
    pub async fn task_ended(&mut self) -> String {
        self.serving
            .first_ended(&["control socket", "reconcile loop"])
            .await
    }

    pub async fn stop(self) {
        self.serving.stop().await;
    }
}

/// Starts the controller of the cluster `config` describes.
pub async fn start(
    config: Config,
    step_hook: Option<StepHook>,
) -> Result<RunningCluster, ControllerError> {
    let (dns, server): (Arc<dyn DnsProvider>, Option<DnsServer>) = match &config.dns.provider {
        DnsProviderConfig::Embedded { listen } => {
            let zone = Arc::new(Zone::new(&config.dns.zone));
            let listen = listen.parse().expect("validated listen address");
            let server =
                DnsServer::start_with_name_servers(zone.clone(), listen, config.dns.ttl, &[])
                    .await?;
            (zone, Some(server))
        }
        DnsProviderConfig::Rfc2136(rfc2136) => (crate::rfc2136_provider(&config, rfc2136)?, None),
    };
    let controller = Arc::new(ClusterController::new(config, dns, step_hook)?);
    let control = ControlServer::bind(controller.clone())?;
    let dns_addr = server.as_ref().map(DnsServer::local_addr);
    controller.events.emit(
        EventKind::ControllerStarted,
        json!({
            "mode": "cluster",
            "dns": dns_addr.map(|a| a.to_string()),
            "control_socket": controller.config.control_socket().display().to_string(),
            "epoch": controller.state().map(|s| s.epoch.epoch),
            "cross_region_failover": controller.config.controller.cross_region_failover,
        }),
    );
    // The essential tasks first ([`RunningCluster::task_ended`] watches them), the webhooks'
    // deliveries after.
    let mut tasks = vec![
        tokio::spawn(control.serve()),
        tokio::spawn(controller.clone().run_loop()),
    ];
    tasks.extend(crate::webhooks::start(
        &controller.config.webhooks,
        &controller.events,
        &controller.metrics,
    )?);
    let socket = controller.config.control_socket();
    Ok(RunningCluster {
        controller,
        dns_addr,
        serving: crate::Serving {
            dns: server,
            tasks,
            socket,
        },
    })
}
