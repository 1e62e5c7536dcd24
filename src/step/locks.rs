//! One actor per image: a run takes every image it will act on before it
//! acts, all at once (so two runs can never each hold half of the other's
//! images), and a second run on the same image waits and says whom for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
pub struct ImageLocks {
    held: Mutex<HashMap<String, String>>,
    released: Notify,
}

/// Held images; dropping it releases them.
pub struct Held {
    locks: Arc<ImageLocks>,
    keys: Vec<String>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().expect("image lock table");
        for k in &self.keys {
            held.remove(k);
        }
        drop(held);
        self.locks.released.notify_waiters();
    }
}

impl ImageLocks {
    /// Takes all `keys` for `owner`, or returns who holds the first busy one.
    pub fn try_acquire(
        self: &Arc<Self>,
        keys: &[String],
        owner: &str,
    ) -> Result<Held, (String, String)> {
        let mut held = self.held.lock().expect("image lock table");
        if let Some((k, o)) = keys
            .iter()
            .find_map(|k| held.get(k).map(|o| (k.clone(), o.clone())))
        {
            return Err((k, o));
        }
        for k in keys {
            held.insert(k.clone(), owner.to_string());
        }
        Ok(Held {
            locks: self.clone(),
            keys: keys.to_vec(),
        })
    }

    /// Waits until all `keys` are free, calling `on_wait(image, holder)` each
    /// time it has to wait.
    pub async fn acquire(
        self: &Arc<Self>,
        keys: &[String],
        owner: &str,
        mut on_wait: impl FnMut(&str, &str),
    ) -> Held {
        loop {
            let notified = self.released.notified();
            match self.try_acquire(keys, owner) {
                Ok(h) => return h,
                Err((k, o)) => {
                    on_wait(&k, &o);
                    notified.await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn second_run_on_an_image_waits_for_the_first() {
        let locks = Arc::new(ImageLocks::default());
        let first = locks
            .try_acquire(&["a".into(), "b".into()], "run-1")
            .unwrap();
        assert_eq!(
            locks.try_acquire(&["b".into()], "run-2").err(),
            Some(("b".into(), "run-1".into()))
        );
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let mut waited_for = None;
            let _h = l2
                .acquire(&["b".into(), "c".into()], "run-2", |_, o| {
                    waited_for = Some(o.to_string())
                })
                .await;
            waited_for
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "run-2 must wait while run-1 holds b");
        drop(first);
        let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(waited.as_deref(), Some("run-1"));
    }
}
