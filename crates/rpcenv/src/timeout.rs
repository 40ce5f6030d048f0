//! [`RpcTimeout`]: a duration together with the name of the setting that controls it, so that every
//! timeout error tells the user which knob to turn (Spark's "This timeout is controlled by ...").

use std::borrow::Cow;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::conf::{ConfError, RpcConf};
use crate::error::RpcError;

/// The env-wide timeouts, read from the configuration. They live here rather than in `conf` so
/// that the configuration does not import the timeout type that is built from it.
impl RpcConf {
    /// The default ask timeout: `rpc.askTimeout`, else `network.timeout`, else 120 s; the timeout
    /// names the first of those keys that is set.
    pub fn ask_timeout(&self) -> RpcTimeout {
        self.timeout_with_fallback("rpc.askTimeout")
    }

    /// The lookup timeout: `rpc.lookupTimeout`, else `network.timeout`, else 120 s.
    pub fn lookup_timeout(&self) -> RpcTimeout {
        self.timeout_with_fallback("rpc.lookupTimeout")
    }

    fn timeout_with_fallback(&self, key: &'static str) -> RpcTimeout {
        RpcTimeout::from_conf_keys(self, &[key, "network.timeout"], "120s")
            .unwrap_or_else(|_| RpcTimeout::new(Duration::from_secs(120), key))
    }
}

/// A timeout and the setting that controls it.
///
/// ```
/// use std::time::Duration;
/// use rpcenv::{RpcConf, RpcTimeout};
///
/// let conf = RpcConf::new().with("app.ask.test.timeout", "30s")?;
/// let t = RpcTimeout::from_conf_keys(&conf, &["app.unset", "app.ask.test.timeout"], "1s")?;
/// assert_eq!(t.duration(), Duration::from_secs(30));
/// assert_eq!(t.setting(), "app.ask.test.timeout");
/// let e = t.timeout_error("rpc://echo@127.0.0.1:7077");
/// assert_eq!(
///     e.to_string(),
///     "Cannot receive any reply from rpc://echo@127.0.0.1:7077 in 30s. \
///      This timeout is controlled by app.ask.test.timeout"
/// );
/// # Ok::<(), rpcenv::ConfError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RpcTimeout {
    duration: Duration,
    /// Shared, not copied: every ask carries a clone of its endpoint ref's timeout.
    setting: Arc<str>,
}

impl RpcTimeout {
    /// A timeout of `duration`, controlled by the setting named `setting`.
    pub fn new(duration: Duration, setting: impl Into<Cow<'static, str>>) -> Self {
        let setting: Cow<'static, str> = setting.into();
        RpcTimeout {
            duration,
            setting: Arc::from(setting.as_ref()),
        }
    }

    /// A timeout that never fires.
    pub fn infinite() -> Self {
        Self::new(Duration::MAX, "infinite")
    }

    /// The timeout read from one key, which must be set.
    pub fn from_conf(conf: &RpcConf, key: &str) -> Result<Self, ConfError> {
        let duration = conf.get_duration(key)?.ok_or_else(|| ConfError::Missing {
            key: key.to_string(),
        })?;
        Ok(Self::new(duration, key.to_string()))
    }

    /// The timeout read from the first of `keys` that is set; if none is, `default` (a duration
    /// such as `"1s"`) controlled by the first key.
    pub fn from_conf_keys(conf: &RpcConf, keys: &[&str], default: &str) -> Result<Self, ConfError> {
        for key in keys {
            if let Some(d) = conf.get_duration(key)? {
                return Ok(Self::new(d, key.to_string()));
            }
        }
        let first = keys.first().copied().unwrap_or("default");
        let duration = crate::conf::parse_duration(default, crate::conf::TimeUnit::Seconds)
            .map_err(|reason| ConfError::Invalid {
                key: first.to_string(),
                value: default.to_string(),
                reason,
            })?;
        Ok(Self::new(duration, first.to_string()))
    }

    /// The duration.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The name of the setting that controls it.
    pub fn setting(&self) -> &str {
        &self.setting
    }

    /// The deadline of a wait that starts now (`None` for an unbounded wait).
    pub fn deadline(&self) -> Option<Instant> {
        Instant::now().checked_add(self.duration)
    }

    /// The error of a wait for a reply from `target` that ran out.
    pub fn timeout_error(&self, target: impl std::fmt::Display) -> RpcError {
        RpcError::Timeout {
            description: format!(
                "Cannot receive any reply from {target} in {}",
                DisplayDuration(self.duration)
            ),
            after: self.duration,
            setting: self.setting.to_string(),
        }
    }

    /// Blocks the calling thread on `future` for at most this long.
    ///
    /// An error of the future is returned as it is (a timeout error the future produced itself is
    /// not amended twice); if this timeout runs out first, the error names this timeout's setting.
    /// Returns [`RpcError::BlockingInAsyncContext`] when called on a tokio runtime thread, where
    /// blocking could deadlock the runtime.
    pub fn await_result<T, F>(&self, future: F) -> Result<T, RpcError>
    where
        F: Future<Output = Result<T, RpcError>>,
    {
        ensure_blocking_allowed("RpcTimeout::await_result")?;
        match block_on_until(future, self.deadline()) {
            Some(result) => result,
            None => Err(self.timeout_error("the awaited future")),
        }
    }
}

/// Formats a duration the way a user writes a setting: `1s`, `10ms`, `2m`.
pub(crate) struct DisplayDuration(pub Duration);

impl std::fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0;
        if d == Duration::MAX {
            return f.write_str("infinity");
        }
        let ms = d.as_millis();
        if !d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}us", d.as_micros())
        } else if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", d.as_secs())
        }
    }
}

/// Returns an error when the current thread is a tokio runtime thread, where a blocking wait could
/// starve or deadlock the runtime.
pub(crate) fn ensure_blocking_allowed(operation: &'static str) -> Result<(), RpcError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(RpcError::BlockingInAsyncContext { operation });
    }
    Ok(())
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Drives `future` on the current thread until it completes or `deadline` passes (`None`).
pub(crate) fn block_on_until<F: Future>(future: F, deadline: Option<Instant>) -> Option<F::Output> {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return Some(v);
        }
        match deadline {
            None => std::thread::park(),
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    return None;
                }
                std::thread::park_timeout(deadline - now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spark: RpcEnvSuite "construct RpcTimeout with conf property".
    #[test]
    fn construct_rpc_timeout_with_conf_property() {
        let conf = RpcConf::new()
            .with("spark.ask.test.timeout", "30s")
            .unwrap()
            .with("spark.ask.secondary.timeout", "100s")
            .unwrap();
        let t = RpcTimeout::from_conf(&conf, "spark.ask.test.timeout").unwrap();
        assert_eq!(t.duration(), Duration::from_secs(30));
        assert_eq!(t.setting(), "spark.ask.test.timeout");

        let keys = [
            "spark.ask.invalid.timeout",
            "spark.ask.test.timeout",
            "spark.ask.secondary.timeout",
        ];
        let t = RpcTimeout::from_conf_keys(&conf, &keys, "1s").unwrap();
        assert_eq!(t.duration(), Duration::from_secs(30));
        assert_eq!(t.setting(), "spark.ask.test.timeout");

        let t = RpcTimeout::from_conf_keys(&conf, &["spark.ask.invalid.timeout"], "1s").unwrap();
        assert_eq!(t.duration(), Duration::from_secs(1));
        assert_eq!(t.setting(), "spark.ask.invalid.timeout");

        let e = RpcTimeout::from_conf(&conf, "spark.ask.invalid.timeout").unwrap_err();
        assert!(matches!(e, ConfError::Missing { ref key } if key == "spark.ask.invalid.timeout"));
    }

    #[test]
    fn durations_display_like_settings() {
        assert_eq!(
            DisplayDuration(Duration::from_secs(120)).to_string(),
            "120s"
        );
        assert_eq!(
            DisplayDuration(Duration::from_millis(10)).to_string(),
            "10ms"
        );
        assert_eq!(DisplayDuration(Duration::from_micros(5)).to_string(), "5us");
    }

    #[test]
    fn await_result_names_the_setting_once() {
        let t = RpcTimeout::new(Duration::from_millis(10), "rpc.short.timeout");
        let e = t
            .await_result(std::future::pending::<Result<(), RpcError>>())
            .unwrap_err();
        assert_eq!(e.to_string().matches("rpc.short.timeout").count(), 1);
        // An error that already is a timeout is returned as it is.
        let inner = t.timeout_error("x");
        let e2 = t.await_result(async { Err::<(), _>(inner) }).unwrap_err();
        assert_eq!(e2.to_string().matches("rpc.short.timeout").count(), 1);
    }

    #[test]
    fn blocking_waits_are_refused_on_runtime_threads() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let t = RpcTimeout::new(Duration::from_secs(1), "x");
        let e = rt.block_on(async { t.await_result(async { Ok(1) }) });
        assert!(matches!(e, Err(RpcError::BlockingInAsyncContext { .. })));
    }
}
