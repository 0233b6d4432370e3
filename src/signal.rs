//! The signals that stop a long-running role: Ctrl-C, or SIGTERM (what
//! `docker stop` sends).

/// Waits for a registered signal (forever when it could not be registered).
#[cfg(unix)]
async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Completes at Ctrl-C or SIGTERM. The handlers are registered when this is
/// called (inside the runtime), not when the future is first polled, so a
/// signal that comes right after start is not lost.
pub fn shutdown() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (mut int, mut term) = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::interrupt()).ok(), signal(SignalKind::terminate()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            tokio::select! {
                () = recv(&mut int) => {}
                () = recv(&mut term) => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("tern: shutting down");
    }
}
