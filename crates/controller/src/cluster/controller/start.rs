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
            .first_ended(&[
                "control socket",
                "reconcile loop",
                "leader campaign",
                "forwarded requests",
                "site presence",
                "records follower",
                "etcd storage check",
            ])
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
    let (controller, server) = match &config.dns.provider {
        // With `[coordination]` every site serves the records in etcd (validation allows only
        // the embedded server there).
        DnsProviderConfig::Embedded { listen } => {
            let (zone, ha) = crate::site_zone(&config).await?;
            let listen = listen.parse().expect("validated listen address");
            let server = DnsServer::start_with_name_servers(
                zone.clone(),
                listen,
                config.dns.ttl,
                &crate::name_servers(&config),
            )
            .await?;
            let controller = match ha {
                Some(ha) => ClusterController::with_coordination(config, ha, step_hook)?,
                None => ClusterController::new(config, zone, step_hook)?,
            };
            (controller, Some(server))
        }
        DnsProviderConfig::Rfc2136(rfc2136) => {
            let dns = crate::rfc2136_provider(&config, rfc2136)?;
            (ClusterController::new(config, dns, step_hook)?, None)
        }
    };
    let controller = Arc::new(controller);
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
            "site": controller.ha.as_ref().map(|ha| ha.site().to_string()),
        }),
    );
    // The essential tasks first ([`RunningCluster::task_ended`] watches them), the webhooks'
    // deliveries after.
    let mut tasks = vec![
        tokio::spawn(control.serve()),
        tokio::spawn(controller.clone().run_loop()),
    ];
    if let Some(ha) = &controller.ha {
        tasks.push(tokio::spawn(crate::ha::campaign(controller.clone())));
        tasks.push(tokio::spawn(crate::ha::serve_requests(controller.clone())));
        tasks.push(tokio::spawn(ha.clone().keep_presence()));
        tasks.push(tokio::spawn(ha.clone().follow_records()));
        tasks.push(tokio::spawn(ha.clone().check_storage()));
    }
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
