//! Integration tests against real valkey-server processes, the real region link emulator and
//! the controller's DNS server, queried with `dig`.

#[cfg(feature = "aws")]
mod aws;
mod chaos;
mod clients;
mod cluster;
mod cluster_controller;
mod config;
mod deps;
mod docs;
mod failover;
mod ha;
mod harness;
mod http;
mod lab;
mod package;
mod page;
mod prometheus;
mod promotion;
mod reconcile;
mod rfc2136;
mod safety;
mod security;
mod three_hosts;
