#![warn(missing_docs)]
//! The message broker seam: publish with confirmation, consume with manual acknowledgement.
//!
//! Two implementations sit side by side: [`memory::MemoryBroker`] (in-process queues, the
//! embedded default) and [`amqp::AmqpBroker`] (RabbitMQ). Producer, worker and collector are
//! written once against [`Broker`]; the semantics they rely on are the same in both:
//! - `publish` returns only once the broker holds the message (publisher confirms);
//! - a delivery that is neither acked nor rejected is redelivered (its `attempt` grows);
//! - `dead_letter` moves a message to the dead-letter queue with a reason, then acks it;
//! - at most `prefetch` unacknowledged deliveries are held by one consumer.

pub mod amqp;
pub mod memory;

use std::future::Future;

/// Which queue of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    /// Partitions waiting to be scored.
    Partitions,
    /// Scores (and job seals) waiting for the collector.
    Results,
    /// Messages that could not be processed, with the reason.
    DeadLetter,
}

/// Queue names, configurable so that several fleets can share one broker.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct QueueNames {
    /// Queue of partitions to score.
    #[arg(
        long = "partitions-queue",
        env = "PARTITIONS_QUEUE",
        default_value = "scoring.partitions"
    )]
    pub partitions: String,
    /// Queue of scored partitions.
    #[arg(
        long = "results-queue",
        env = "RESULTS_QUEUE",
        default_value = "scoring.results"
    )]
    pub results: String,
    /// Queue where poison messages end, with their error.
    #[arg(
        long = "dead-letter-queue",
        env = "DEAD_LETTER_QUEUE",
        default_value = "scoring.dead-letter"
    )]
    pub dead_letter: String,
}

impl QueueNames {
    /// The name of `queue` on the broker.
    pub fn name(&self, queue: Queue) -> &str {
        match queue {
            Queue::Partitions => &self.partitions,
            Queue::Results => &self.results,
            Queue::DeadLetter => &self.dead_letter,
        }
    }
}

/// A cause kept with a [`BrokerError`]: the AMQP client's error, an `io::Error`.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a broker operation failed; [`BrokerError::is_transient`] says whether to try again.
/// The client's error is kept as the source, never flattened into the message.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker could not be reached.
    #[error("cannot connect to the message broker at {url}{hint}")]
    Connect {
        /// The broker's URL, its password left out.
        url: String,
        /// What to check, where it is known (empty, or starting with `; `).
        hint: &'static str,
        /// What failed.
        #[source]
        source: Cause,
    },
    /// The broker refused the user name or password: trying again will not help.
    #[error(
        "the message broker refused the credentials for {url}: check the user name and password in the AMQP URL"
    )]
    Credentials {
        /// The broker's URL, its password left out.
        url: String,
    },
    /// An open connection went away.
    #[error("the message broker connection was lost{detail}")]
    Lost {
        /// What was being done, or what is known (empty, or starting with `: ` or `; `).
        detail: String,
        /// What failed, if anything said.
        #[source]
        source: Option<Cause>,
    },
    /// The broker did not take a published message.
    #[error("the message broker did not confirm a message to {queue}{detail}")]
    NotConfirmed {
        /// The queue published to.
        queue: String,
        /// What the broker answered, if it answered (empty, or starting with `: `).
        detail: String,
        /// What failed, if the publish failed.
        #[source]
        source: Option<Cause>,
    },
    /// Anything else the broker reported: a setting that cannot work.
    #[error("{message}")]
    Other {
        /// What failed, and what to do.
        message: String,
        /// What the broker or the system said.
        #[source]
        source: Cause,
    },
}

impl BrokerError {
    /// Whether reconnecting may help (as opposed to a configuration error).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BrokerError::Lost { .. } | BrokerError::NotConfirmed { .. }
        )
    }

    /// A lost connection, said in `detail` alone (empty, or starting with `: `).
    pub fn lost(detail: impl Into<String>) -> Self {
        BrokerError::Lost {
            detail: detail.into(),
            source: None,
        }
    }
}

/// The outcome of settling a delivery (ack, retry, dead-letter), where a lost connection is
/// not a failure: the broker hands the message out again, and the fleet tolerates duplicates
/// (the collector keeps one row set per job and partition). Other errors stay errors.
pub fn settled(result: Result<(), BrokerError>) -> Result<(), BrokerError> {
    match result {
        Err(e @ BrokerError::Lost { .. }) => {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "delivery not settled; the broker will deliver it again"
            );
            Ok(())
        }
        other => other,
    }
}

/// A message broker with confirmed publishing and acknowledged consumption.
pub trait Broker: Clone + Send + Sync + 'static {
    /// What [`Broker::consume`] returns.
    type Consumer: Consumer;

    /// Publishes `payload` to `queue` and waits until the broker holds it.
    fn publish(
        &self,
        queue: Queue,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Starts consuming `queue`, holding at most `prefetch` unacknowledged deliveries.
    fn consume(
        &self,
        queue: Queue,
        prefetch: u16,
    ) -> impl Future<Output = Result<Self::Consumer, BrokerError>> + Send;

    /// Number of messages ready in `queue`, if the broker can tell.
    fn ready_count(&self, queue: Queue) -> impl Future<Output = Result<u64, BrokerError>> + Send;
}

/// One queue's stream of deliveries.
pub trait Consumer: Send + 'static {
    /// What [`Consumer::next`] yields.
    type Delivery: Delivery;

    /// The next delivery; `None` once the consumer is closed (broker shut down or cancelled).
    fn next(&mut self) -> impl Future<Output = Result<Option<Self::Delivery>, BrokerError>> + Send;

    /// How many times this consumer has subscribed to its queue. It grows when the consumer
    /// lost its subscription and took a new one: other consumers may have been handed its
    /// queue's messages in between.
    fn subscriptions(&self) -> u64;
}

/// One message taken from a queue, held until it is acknowledged, retried or dead-lettered.
pub trait Delivery: Send + 'static {
    /// The message's bytes.
    fn payload(&self) -> &[u8];

    /// 1 for the first delivery, higher for redeliveries.
    fn attempt(&self) -> u32;

    /// On the dead-letter queue: why the message was put there, if it says.
    fn dead_letter_reason(&self) -> Option<String> {
        None
    }

    /// Done with: the broker forgets the message.
    fn ack(self) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Not processed this time: deliver it again, to this or another consumer.
    fn retry(self) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Never processable: move it to the dead-letter queue with `reason`.
    fn dead_letter(self, reason: &str) -> impl Future<Output = Result<(), BrokerError>> + Send;
}
