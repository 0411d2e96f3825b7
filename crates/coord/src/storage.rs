//! etcd's storage as an operator must watch it: database size, quota, alarms.

use etcd_client::{AlarmAction, AlarmType};

use crate::{CoordError, Coordinator};

/// etcd's storage: its database size, its quota when it reports one (etcd 3.6 and later), and
/// the cluster's active alarms (`NOSPACE`: past its quota, etcd refuses every write).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Storage {
    pub db_bytes: u64,
    pub quota_bytes: Option<u64>,
    pub alarms: Vec<String>,
}

impl Storage {
    /// The share of the quota (the reported one, else `configured`) at which `status` warns.
    pub const WARN_PERCENT: u64 = 80;

    /// What an operator must know about this storage, worst first (empty: nothing).
    pub fn warnings(&self, configured_quota: u64) -> Vec<String> {
        let mut warnings: Vec<String> = self
            .alarms
            .iter()
            .map(|alarm| match alarm.as_str() {
                "NOSPACE" => "etcd alarm NOSPACE: etcd refuses every write, and the writer's region pauses its writer; compact, defragment, then `etcdctl alarm disarm`".to_string(),
                other => format!("etcd alarm {other}: see etcd's operations guide"),
            })
            .collect();
        let quota = self.quota_bytes.unwrap_or(configured_quota);
        if quota > 0
            && self.db_bytes.saturating_mul(100) >= quota.saturating_mul(Self::WARN_PERCENT)
        {
            warnings.push(format!(
                "etcd's database is {} MiB of its {} MiB quota ({}%): compact and defragment before etcd refuses writes",
                self.db_bytes >> 20,
                quota >> 20,
                self.db_bytes.saturating_mul(100) / quota
            ));
        }
        warnings
    }
}

impl Coordinator {
    /// etcd's storage as the member that answers reports it, with the cluster's active alarms.
    pub async fn storage(&self) -> Result<Storage, CoordError> {
        let status = self.call(|mut c| async move { c.status().await }).await?;
        let alarms = self
            .call(|mut c| async move { c.alarm(AlarmAction::Get, AlarmType::None, None).await })
            .await?;
        Ok(Storage {
            db_bytes: status.db_size().max(0) as u64,
            quota_bytes: u64::try_from(status.db_size_quota())
                .ok()
                .filter(|q| *q > 0),
            alarms: alarms
                .alarms()
                .iter()
                .filter_map(|a| match a.alarm() {
                    AlarmType::Nospace => Some("NOSPACE".to_string()),
                    AlarmType::Corrupt => Some("CORRUPT".to_string()),
                    AlarmType::None => None,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Storage;

    #[test]
    pub(crate) fn storage_warns_on_an_alarm_and_near_the_quota() {
        const MIB: u64 = 1 << 20;
        let at = |db_mib: u64, quota_mib: Option<u64>, alarms: &[&str]| Storage {
            db_bytes: db_mib * MIB,
            quota_bytes: quota_mib.map(|q| q * MIB),
            alarms: alarms.iter().map(|a| a.to_string()).collect(),
        };
        let configured = 2048 * MIB;
        // (storage, warnings expected, a text each must hold)
        let table: &[(Storage, usize, &str)] = &[
            (at(1, None, &[]), 0, ""),
            (at(1637, None, &[]), 0, ""),
            (
                at(1639, None, &[]),
                1,
                "1639 MiB of its 2048 MiB quota (80%)",
            ),
            (at(90, Some(100), &[]), 1, "of its 100 MiB quota (90%)"),
            (at(1639, Some(8192), &[]), 0, ""),
            (at(1, None, &["NOSPACE"]), 1, "refuses every write"),
            (at(2048, None, &["NOSPACE"]), 2, "NOSPACE"),
            (at(1, None, &["CORRUPT"]), 1, "etcd alarm CORRUPT"),
        ];
        for (storage, count, text) in table {
            let warnings = storage.warnings(configured);
            assert_eq!(warnings.len(), *count, "{storage:?}: {warnings:?}");
            assert!(
                warnings.iter().all(|w| w.contains(text)) || warnings[0].contains(text),
                "{warnings:?}"
            );
        }
    }
}
