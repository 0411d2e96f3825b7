//! Watching one key: a follower learns of the leader's writes moments after they commit.

use crate::{CoordError, Coordinator, Versioned, unavailable};

impl Coordinator {
    /// Watches `name`: [`Watch::changed`] returns at each change after this call. A follower
    /// copies what the leader wrote moments after the commit instead of polling for it.
    pub async fn watch(&self, name: &str) -> Result<Watch, CoordError> {
        let key = self.key(name);
        let stream = self
            .call(|mut c| {
                let key = key.clone();
                async move { c.watch(key, None).await }
            })
            .await?;
        Ok(Watch { stream })
    }
}

/// A watch on one key ([`Coordinator::watch`]); cancelled when dropped.
pub struct Watch {
    stream: etcd_client::WatchStream,
}

impl Watch {
    /// Waits for the next change of the key and returns what it holds after it. An error (the
    /// stream broke, or etcd cancelled the watch, e.g. after a compaction) means: read again and
    /// watch anew.
    pub async fn changed(&mut self) -> Result<Versioned, CoordError> {
        loop {
            match self.stream.message().await {
                Ok(Some(response)) if response.canceled() => {
                    return Err(CoordError::Unavailable(format!(
                        "etcd cancelled the watch: {}",
                        response.cancel_reason()
                    )));
                }
                Ok(Some(response)) => {
                    // The creation acknowledgement and progress notifications carry no event.
                    if let Some(last) = response.events().last()
                        && let Some(kv) = last.kv()
                    {
                        let deleted = last.event_type() == etcd_client::EventType::Delete;
                        return Ok(Versioned {
                            value: (!deleted).then(|| kv.value().to_vec()),
                            revision: kv.mod_revision(),
                        });
                    }
                }
                Ok(None) => return Err(CoordError::Unavailable("the watch stream ended".into())),
                Err(e) => return Err(unavailable(e)),
            }
        }
    }
}
