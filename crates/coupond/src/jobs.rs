//! The bulk-code runner: works through jobs that are still generating, a chunk per
//! transaction, until each is done. A job's progress is committed with its codes, so a
//! crash loses at most the chunk in flight, and a restart (or any other coupond process
//! on the same PostgreSQL database) picks the job up where it stopped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::domain::JobStatus;
use crate::storage::Store;

/// How often the runner looks for jobs it was not told about (another process's, or
/// ones left running by a crash).
const LOOK_EVERY: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
pub struct CodeJobs {
    wake: Arc<Notify>,
}

impl CodeJobs {
    /// A job was just started: look now rather than at the next tick.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn spawn(&self, store: Store) -> JoinHandle<()> {
        let wake = self.wake.clone();
        tokio::spawn(async move {
            loop {
                run_pending(&store).await;
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(LOOK_EVERY) => {}
                }
            }
        })
    }
}

async fn run_pending(store: &Store) {
    let jobs = match store.running_code_jobs().await {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!(error = %e, "looking for code jobs failed");
            return;
        }
    };
    for job in jobs {
        loop {
            match store.run_code_job_chunk(job.id).await {
                Ok(Some(progress)) if progress.status == JobStatus::Running => {
                    // Let other work in between chunks.
                    tokio::task::yield_now().await;
                }
                Ok(Some(done)) => {
                    tracing::info!(
                        job = done.id,
                        batch = done.batch_id,
                        codes = done.generated,
                        "code job done"
                    );
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, job = job.id, "code job chunk failed; will retry");
                    break;
                }
            }
        }
    }
}
