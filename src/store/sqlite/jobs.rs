//! The write thread's job channel, with a count of the jobs waiting in it.
//!
//! A merge step runs between jobs; the count lets it end early once a job
//! is waiting, so a journal append (and so a delivery) waits for a few
//! inserts of a merge rather than its whole time budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

pub(super) fn channel<T>() -> (JobSender<T>, JobReceiver<T>) {
    let (sender, receiver) = mpsc::channel();
    let waiting = Arc::new(AtomicUsize::new(0));
    (
        JobSender {
            sender,
            waiting: Arc::clone(&waiting),
        },
        JobReceiver { receiver, waiting },
    )
}

pub(super) struct JobSender<T> {
    sender: mpsc::Sender<T>,
    waiting: Arc<AtomicUsize>,
}

impl<T> JobSender<T> {
    /// Counted before it is sent, so the receiver never takes a job it has
    /// not counted (the count never goes below zero).
    pub(super) fn send(&self, job: T) -> Result<(), mpsc::SendError<T>> {
        self.waiting.fetch_add(1, Ordering::Release);
        self.sender.send(job).inspect_err(|_| {
            self.waiting.fetch_sub(1, Ordering::Release);
        })
    }
}

pub(super) struct JobReceiver<T> {
    receiver: mpsc::Receiver<T>,
    waiting: Arc<AtomicUsize>,
}

impl<T> JobReceiver<T> {
    pub(super) fn try_recv(&self) -> Result<T, mpsc::TryRecvError> {
        self.taken(self.receiver.try_recv())
    }

    pub(super) fn recv_timeout(&self, timeout: Duration) -> Result<T, mpsc::RecvTimeoutError> {
        self.taken(self.receiver.recv_timeout(timeout))
    }

    /// Whether a job has been sent and not yet taken.
    pub(super) fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    fn taken<E>(&self, received: Result<T, E>) -> Result<T, E> {
        if received.is_ok() {
            self.waiting.fetch_sub(1, Ordering::Release);
        }
        received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_was_sent_and_not_taken() {
        let (sender, receiver) = channel();
        assert!(!receiver.is_waiting());
        sender.send(1).unwrap();
        sender.send(2).unwrap();
        assert!(receiver.is_waiting());
        assert_eq!(receiver.try_recv(), Ok(1));
        assert!(receiver.is_waiting());
        assert_eq!(receiver.recv_timeout(Duration::ZERO), Ok(2));
        assert!(!receiver.is_waiting());
        assert!(receiver.try_recv().is_err());
        assert!(!receiver.is_waiting(), "a failed receive takes nothing");
        drop(receiver);
        assert!(sender.send(3).is_err());
    }
}
