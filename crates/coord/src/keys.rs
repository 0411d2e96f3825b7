//! The etcd key layout of one deployment, every key under its prefix (`/valkey-dr/<owner>`
//! unless configured):
//!
//! | key               | written by                           | holds                                          |
//! |-------------------|--------------------------------------|------------------------------------------------|
//! | `leader`          | the campaign, on the leader's lease  | the leading site; its create revision is the fencing token |
//! | `sites/<site>`    | each site, on its presence lease     | that the site's controller is alive and fences its region |
//! | `views/<site>`    | each site, on its presence lease     | what the site sees of the writer (the majority check) |
//! | `state`           | the leader, fenced                   | epoch, intent, lineage, block, self-fence, data loss |
//! | `cluster-state`   | the leader, fenced (`mode = "cluster"`) | the cluster's epoch and its move in flight |
//! | `dns`             | the leader, fenced                   | the managed records every site serves          |
//! | `requests/<id>`   | any site, expiring                   | an operator request handed to the leader       |
//! | `results/<id>`    | the leader, expiring                 | its reply                                      |

pub const LEADER: &str = "leader";
pub const SITES: &str = "sites";
pub const VIEWS: &str = "views";
pub const STATE: &str = "state";
/// A cluster's epoch and its move in flight (`mode = "cluster"`).
pub const CLUSTER_STATE: &str = "cluster-state";
pub const RECORDS: &str = "dns";
pub const REQUESTS: &str = "requests";
pub const RESULTS: &str = "results";

pub fn site(site: &str) -> String {
    format!("{SITES}/{site}")
}

pub fn view(site: &str) -> String {
    format!("{VIEWS}/{site}")
}

pub fn request(id: &str) -> String {
    format!("{REQUESTS}/{id}")
}

pub fn result(id: &str) -> String {
    format!("{RESULTS}/{id}")
}
