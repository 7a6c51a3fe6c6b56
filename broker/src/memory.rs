//! In-process queues with the broker's delivery semantics: the embedded default.
//!
//! Queues are bounded (publishers wait for room) so that a fast producer cannot decode a
//! whole dataset into memory ahead of the workers. A delivery dropped without being settled
//! goes back to the queue, as an unacked message does when an AMQP channel closes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{Broker, BrokerError, Consumer, Delivery, Queue};

/// Ready messages a queue holds before publishers wait: about 16 partitions.
pub const DEFAULT_CAPACITY: usize = 16;
/// Deliveries of one message before it is dead-lettered, as a quorum queue's delivery limit.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// In-process queues with the semantics of the fleet's RabbitMQ queues: bounded, confirmed,
/// redelivered on retry, dead-lettered past the delivery limit.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    partitions: MemQueue,
    results: MemQueue,
    dead_letter: MemQueue,
    max_attempts: u32,
}

#[derive(Debug)]
struct MemQueue {
    state: Mutex<QueueState>,
    /// Woken on every change of `state`; waiters re-check.
    changed: Notify,
    capacity: usize,
}

#[derive(Debug, Default)]
struct QueueState {
    ready: VecDeque<Message>,
    closed: bool,
}

#[derive(Debug)]
struct Message {
    payload: Vec<u8>,
    attempt: u32,
    reason: Option<String>,
}

/// A message that ended in the dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The message's bytes.
    pub payload: Vec<u8>,
    /// Why it was dead-lettered.
    pub reason: String,
}

impl MemQueue {
    fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(QueueState::default()),
            changed: Notify::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock leaves a consistent VecDeque: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, message: Message, front: bool) {
        let mut state = self.lock();
        if front {
            state.ready.push_front(message);
        } else {
            state.ready.push_back(message);
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_MAX_ATTEMPTS)
    }
}

impl MemoryBroker {
    /// Queues holding at most `capacity` messages each (a publisher waits for room), and
    /// dead-lettering a message at its `max_attempts`-th failed delivery.
    pub fn new(capacity: usize, max_attempts: u32) -> Self {
        let capacity = capacity.max(1);
        Self {
            inner: Arc::new(Inner {
                partitions: MemQueue::new(capacity),
                results: MemQueue::new(capacity),
                dead_letter: MemQueue::new(usize::MAX),
                max_attempts: max_attempts.max(1),
            }),
        }
    }

    fn queue(&self, queue: Queue) -> &MemQueue {
        match queue {
            Queue::Partitions => &self.inner.partitions,
            Queue::Results => &self.inner.results,
            Queue::DeadLetter => &self.inner.dead_letter,
        }
    }

    /// Shuts the broker down: publishers fail and consumers see the end of their queue.
    pub fn close(&self) {
        for queue in [Queue::Partitions, Queue::Results, Queue::DeadLetter] {
            let q = self.queue(queue);
            q.lock().closed = true;
            q.changed.notify_waiters();
        }
    }

    /// Takes every message out of the dead-letter queue.
    pub fn drain_dead_letters(&self) -> Vec<DeadLetter> {
        self.inner
            .dead_letter
            .lock()
            .ready
            .drain(..)
            .map(|m| DeadLetter {
                payload: m.payload,
                reason: m.reason.unwrap_or_default(),
            })
            .collect()
    }

    fn dead_letter_message(&self, payload: Vec<u8>, reason: String) {
        self.inner.dead_letter.push(
            Message {
                payload,
                attempt: 1,
                reason: Some(reason),
            },
            false,
        );
    }
}

fn closed() -> BrokerError {
    BrokerError::lost(": the in-process broker has shut down")
}

impl Broker for MemoryBroker {
    type Consumer = MemoryConsumer;

    async fn publish(&self, queue: Queue, payload: Vec<u8>) -> Result<(), BrokerError> {
        let q = self.queue(queue);
        let mut payload = Some(payload);
        loop {
            let changed = q.changed.notified();
            {
                let mut state = q.lock();
                if state.closed {
                    return Err(closed());
                }
                if state.ready.len() < q.capacity {
                    let payload = payload.take().expect("published once");
                    state.ready.push_back(Message {
                        payload,
                        attempt: 1,
                        reason: None,
                    });
                    drop(state);
                    q.changed.notify_waiters();
                    return Ok(());
                }
            }
            changed.await;
        }
    }

    async fn consume(&self, queue: Queue, prefetch: u16) -> Result<MemoryConsumer, BrokerError> {
        Ok(MemoryConsumer {
            broker: self.clone(),
            queue,
            prefetch: Arc::new(Semaphore::new(usize::from(prefetch.max(1)))),
        })
    }

    async fn ready_count(&self, queue: Queue) -> Result<u64, BrokerError> {
        Ok(self.queue(queue).lock().ready.len() as u64)
    }
}

/// A consumer of one in-process queue.
#[derive(Debug)]
pub struct MemoryConsumer {
    broker: MemoryBroker,
    queue: Queue,
    prefetch: Arc<Semaphore>,
}

impl Consumer for MemoryConsumer {
    type Delivery = MemoryDelivery;

    async fn next(&mut self) -> Result<Option<MemoryDelivery>, BrokerError> {
        let permit = self
            .prefetch
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let q = self.broker.queue(self.queue);
        loop {
            let changed = q.changed.notified();
            {
                let mut state = q.lock();
                if state.closed {
                    return Ok(None);
                }
                if let Some(message) = state.ready.pop_front() {
                    drop(state);
                    // Room for a waiting publisher.
                    q.changed.notify_waiters();
                    return Ok(Some(MemoryDelivery {
                        broker: self.broker.clone(),
                        queue: self.queue,
                        message: Some(message),
                        _permit: permit,
                    }));
                }
            }
            changed.await;
        }
    }

    /// Always 1: an in-process subscription is never lost.
    fn subscriptions(&self) -> u64 {
        1
    }
}

/// A message taken from an in-process queue.
#[derive(Debug)]
pub struct MemoryDelivery {
    broker: MemoryBroker,
    queue: Queue,
    /// `None` once settled.
    message: Option<Message>,
    _permit: OwnedSemaphorePermit,
}

impl MemoryDelivery {
    fn requeue(&mut self) {
        let Some(mut message) = self.message.take() else {
            return;
        };
        if message.attempt >= self.broker.inner.max_attempts {
            let reason = format!(
                "delivered {} times without being processed",
                message.attempt
            );
            self.broker.dead_letter_message(message.payload, reason);
            return;
        }
        message.attempt += 1;
        // To the front: like RabbitMQ, a returned message is the next one delivered.
        self.broker.queue(self.queue).push(message, true);
    }
}

impl Drop for MemoryDelivery {
    /// Unsettled (the task holding it failed or was cancelled): deliver it again.
    fn drop(&mut self) {
        self.requeue();
    }
}

impl Delivery for MemoryDelivery {
    fn payload(&self) -> &[u8] {
        self.message.as_ref().map_or(&[], |m| &m.payload)
    }

    fn attempt(&self) -> u32 {
        self.message.as_ref().map_or(0, |m| m.attempt)
    }

    async fn ack(mut self) -> Result<(), BrokerError> {
        self.message = None;
        Ok(())
    }

    async fn retry(mut self) -> Result<(), BrokerError> {
        self.requeue();
        Ok(())
    }

    async fn dead_letter(mut self, reason: &str) -> Result<(), BrokerError> {
        if let Some(message) = self.message.take() {
            self.broker
                .dead_letter_message(message.payload, reason.to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn delivers_in_order_and_forgets_acked_messages() {
        let broker = MemoryBroker::default();
        broker
            .publish(Queue::Partitions, b"a".to_vec())
            .await
            .unwrap();
        broker
            .publish(Queue::Partitions, b"b".to_vec())
            .await
            .unwrap();
        let mut consumer = broker.consume(Queue::Partitions, 2).await.unwrap();
        let a = consumer.next().await.unwrap().unwrap();
        assert_eq!((a.payload(), a.attempt()), (&b"a"[..], 1));
        a.ack().await.unwrap();
        let b = consumer.next().await.unwrap().unwrap();
        assert_eq!(b.payload(), b"b");
        b.ack().await.unwrap();
        assert_eq!(broker.ready_count(Queue::Partitions).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn unsettled_deliveries_come_back_then_dead_letter() {
        let broker = MemoryBroker::new(4, 2);
        broker
            .publish(Queue::Partitions, b"x".to_vec())
            .await
            .unwrap();
        let mut consumer = broker.consume(Queue::Partitions, 1).await.unwrap();
        drop(consumer.next().await.unwrap().unwrap()); // a worker died mid-partition
        let again = consumer.next().await.unwrap().unwrap();
        assert_eq!(again.attempt(), 2);
        again.retry().await.unwrap(); // second failure: the limit is 2
        assert_eq!(broker.ready_count(Queue::Partitions).await.unwrap(), 0);
        let dead = broker.drain_dead_letters();
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0].reason.contains("delivered 2 times"),
            "{}",
            dead[0].reason
        );
    }

    #[tokio::test]
    async fn publishers_wait_for_room_and_prefetch_is_bounded() {
        let broker = MemoryBroker::new(1, 5);
        broker.publish(Queue::Results, b"1".to_vec()).await.unwrap();
        let blocked = tokio::time::timeout(
            Duration::from_millis(50),
            broker.publish(Queue::Results, b"2".to_vec()),
        )
        .await;
        assert!(
            blocked.is_err(),
            "a full queue must make the publisher wait"
        );

        let publisher = {
            let broker = broker.clone();
            tokio::spawn(async move { broker.publish(Queue::Results, b"2".to_vec()).await })
        };
        let mut consumer = broker.consume(Queue::Results, 1).await.unwrap();
        let first = consumer.next().await.unwrap().unwrap();
        publisher.await.unwrap().unwrap();
        // Prefetch 1: the second message is not handed out while the first is unacked.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), consumer.next())
                .await
                .is_err()
        );
        first.ack().await.unwrap();
        assert_eq!(consumer.next().await.unwrap().unwrap().payload(), b"2");
    }

    #[tokio::test]
    async fn close_ends_consumers_and_fails_publishers() {
        let broker = MemoryBroker::default();
        let mut consumer = broker.consume(Queue::Partitions, 1).await.unwrap();
        let waiting = tokio::spawn(async move { consumer.next().await.map(|d| d.is_none()) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        broker.close();
        assert!(waiting.await.unwrap().unwrap());
        assert!(broker.publish(Queue::Partitions, vec![]).await.is_err());
    }

    #[tokio::test]
    async fn dead_letters_keep_their_reason() {
        let broker = MemoryBroker::default();
        broker
            .publish(Queue::Partitions, b"poison".to_vec())
            .await
            .unwrap();
        let mut consumer = broker.consume(Queue::Partitions, 1).await.unwrap();
        consumer
            .next()
            .await
            .unwrap()
            .unwrap()
            .dead_letter("bad pixels")
            .await
            .unwrap();
        assert_eq!(
            broker.drain_dead_letters(),
            vec![DeadLetter {
                payload: b"poison".to_vec(),
                reason: "bad pixels".into()
            }]
        );
    }
}
