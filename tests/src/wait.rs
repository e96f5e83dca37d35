//! Bounded waiting: poll a condition every 20 ms until it holds or a deadline passes.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`wait_until`] and [`wait_for`] poll.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` every 20 ms until it returns `true`; panics naming `what` after `timeout`.
///
/// ```no_run
/// # async fn f(b: &tests::Backend) {
/// use std::time::Duration;
/// tests::wait_until(Duration::from_secs(5), "backend up", || async {
///     tests::get(&b.url("/healthz")).await.status == 200
/// }).await;
/// # }
/// ```
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let fut = cond();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `f` every 20 ms until it returns `Some(v)`, then returns `v`; panics naming `what`
/// after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut tries = 0u32;
    loop {
        tries += 1;
        // A single slow attempt must not run past the deadline either.
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Some(v)) = tokio::time::timeout(left.max(POLL), f()).await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} ({tries} tries) waiting for: {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Blocking variant of [`wait_until`] for code outside an async runtime.
pub fn wait_until_blocking(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(POLL);
    }
}
