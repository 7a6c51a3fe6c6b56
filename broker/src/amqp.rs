//! RabbitMQ over AMQP 0-9-1 (`lapin` on tokio), following RabbitMQ's reliability recipe:
//! durable quorum queues, persistent messages, publisher confirms, manual acks, bounded
//! prefetch, a delivery limit after which the broker dead-letters a message, and a
//! dead-letter queue where rejected messages carry their error in the `x-error` header.
//!
//! When the connection drops, publishers and consumers reconnect with backoff for a bounded
//! time. Deliveries received on the lost connection can no longer be acked; RabbitMQ hands
//! their messages out again, which the consumers are built to tolerate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use super::{Broker, BrokerError, Consumer, Delivery, Queue, QueueNames};

/// How to reach the broker. Part of the configuration of every binary that uses it.
#[derive(Debug, Clone, clap::Args)]
pub struct AmqpArgs {
    /// AMQP URL of the broker, e.g. amqp://user:password@host:5672/%2f.
    #[arg(
        long = "amqp-url",
        env = "AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub url: String,
    /// Deliveries of one message before the broker dead-letters it (quorum queue delivery limit).
    #[arg(long = "delivery-limit", env = "DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,
    /// How long to keep trying to reconnect when the broker goes away, in seconds.
    #[arg(
        long = "amqp-reconnect-secs",
        env = "AMQP_RECONNECT_SECS",
        default_value_t = 120
    )]
    pub reconnect_secs: u64,
    /// PEM file of certificate authorities to trust for an amqps:// broker, besides the
    /// system's (a broker with a private or self-signed certificate).
    #[arg(long = "amqp-ca-cert", env = "AMQP_CA_CERT", value_name = "PEM FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// The names of the fleet's queues.
    #[command(flatten)]
    pub queues: QueueNames,
}

/// RabbitMQ: quorum queues with a delivery limit and a dead-letter queue, publisher confirms,
/// reconnecting with backoff when the connection goes away.
#[derive(Debug, Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    args: AmqpArgs,
    /// The live connection and its publishing channel; replaced on reconnect.
    link: Mutex<Option<Link>>,
    /// Bumped on every reconnect, so that consumers notice they must re-subscribe.
    generation: AtomicU64,
}

#[derive(Debug, Clone)]
struct Link {
    connection: Arc<Connection>,
    publisher: Channel,
}

impl Link {
    fn is_open(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

/// The URL without its password, for messages and logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn classify(url: &str, e: lapin::Error) -> BrokerError {
    let text = e.to_string();
    if text.contains("ACCESS_REFUSED")
        || text.contains("ACCESS-REFUSED")
        || text.to_lowercase().contains("auth")
    {
        BrokerError::Credentials { url: redact(url) }
    } else {
        let hint = if text.contains("certificate") {
            "; the broker's TLS certificate is not trusted: if it is signed by a private or \
             self-signed authority, pass that authority's PEM with --amqp-ca-cert (AMQP_CA_CERT)"
        } else {
            ""
        };
        BrokerError::Connect {
            url: redact(url),
            hint,
            source: e.into(),
        }
    }
}

/// A lost connection, met while `doing` something.
fn lost(doing: &str, e: lapin::Error) -> BrokerError {
    BrokerError::Lost {
        detail: format!(" while {doing}"),
        source: Some(e.into()),
    }
}

impl AmqpBroker {
    /// Connects and declares the queues. Fails at once (no retry) when the broker cannot be
    /// reached or refuses the credentials: that is a configuration error to report. A
    /// connection the broker drops while the queues are declared is retried.
    pub async fn connect(args: AmqpArgs) -> Result<Self, BrokerError> {
        let mut attempt = 0;
        let link = loop {
            match open_and_declare(&args).await {
                Ok(link) => break link,
                Err(e) if e.is_transient() && attempt < 8 => {
                    attempt += 1;
                    let delay = backoff(attempt);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "the broker dropped the connection while the queues were declared");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                args,
                link: Mutex::new(Some(link)),
                generation: AtomicU64::new(0),
            }),
        })
    }

    fn names(&self) -> &QueueNames {
        &self.inner.args.queues
    }

    /// The live link, reconnecting (with backoff, for a bounded time) if it was lost.
    async fn link(&self) -> Result<Link, BrokerError> {
        let mut guard = self.inner.link.lock().await;
        if let Some(link) = guard.as_ref().filter(|l| l.is_open()) {
            return Ok(link.clone());
        }
        let deadline = Instant::now() + Duration::from_secs(self.inner.args.reconnect_secs);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let delay = backoff(attempt);
            match open_and_declare(&self.inner.args).await {
                Ok(link) => {
                    self.inner.generation.fetch_add(1, Ordering::SeqCst);
                    tracing::info!(url = %redact(&self.inner.args.url), "reconnected to the message broker");
                    *guard = Some(link.clone());
                    return Ok(link);
                }
                Err(e @ BrokerError::Other { .. }) => return Err(e),
                Err(e) if Instant::now() + delay < deadline => {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        retry_in_ms = delay.as_millis() as u64,
                        "message broker unreachable"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    return Err(BrokerError::Lost {
                        detail: format!(
                            "; gave up reconnecting after {}s",
                            self.inner.args.reconnect_secs
                        ),
                        source: Some(e.into()),
                    });
                }
            }
        }
    }

    async fn confirmed_publish(
        &self,
        queue_name: &str,
        payload: &[u8],
        headers: FieldTable,
    ) -> Result<(), BrokerError> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2) // persistent
            .with_content_type(ShortString::from("application/x-postcard"))
            .with_headers(headers);
        let (mut attempts, mut nacks) = (0, 0);
        loop {
            attempts += 1;
            let link = self.link().await?;
            let outcome = async {
                let confirm = link
                    .publisher
                    .basic_publish(
                        ShortString::from(""),
                        ShortString::from(queue_name),
                        BasicPublishOptions::default(),
                        payload,
                        properties.clone(),
                    )
                    .await?;
                confirm.await
            }
            .await;
            match outcome {
                Ok(Confirmation::Ack(_)) => return Ok(()),
                // A nack says the queue could not take the message: a quorum queue whose
                // leader is still starting (a busy broker can take seconds) or moving. Publish
                // again after a pause; a queue that stays away is reported.
                Ok(Confirmation::Nack(_)) if nacks < MAX_NACKS => {
                    nacks += 1;
                    let delay = backoff(nacks);
                    tracing::warn!(
                        queue = queue_name,
                        retry_in_ms = delay.as_millis() as u64,
                        "the broker refused a message (nack); publishing it again"
                    );
                    tokio::time::sleep(delay).await;
                }
                Ok(other) => {
                    return Err(BrokerError::NotConfirmed {
                        queue: queue_name.into(),
                        detail: format!(": {other:?} after {nacks} retries"),
                        source: None,
                    });
                }
                // The connection went away before the confirm: publish again on a new one.
                // (The broker may hold the first copy too; consumers tolerate duplicates.)
                Err(e) if attempts < 1000 => {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        queue = queue_name,
                        "publish interrupted; retrying"
                    );
                    if link.is_open() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(e) => {
                    return Err(BrokerError::NotConfirmed {
                        queue: queue_name.into(),
                        detail: String::new(),
                        source: Some(e.into()),
                    });
                }
            }
        }
    }
}

/// Nacks of one message before publishing it is given up: about half a minute of backoff.
const MAX_NACKS: u32 = 10;

/// 200 ms doubling up to 5 s, plus up to 25% jitter: processes that lost the broker together
/// (or raced to declare the same queues) should not all come back in the same instant.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(200)
        .saturating_mul(1 << attempt.saturating_sub(1).min(5))
        .min(Duration::from_secs(5));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// A connection with the queues declared. RabbitMQ before 4.0 can fail one of several clients
/// that declare the same quorum queue at the same moment with INTERNAL_ERROR, closing its
/// connection: that comes back as [`BrokerError::Lost`], to be retried. A queue that exists
/// with other settings closes only the channel, and is a configuration error.
async fn open_and_declare(args: &AmqpArgs) -> Result<Link, BrokerError> {
    let link = open_link(args).await?;
    match declare_topology(&link.publisher, args).await {
        Ok(()) => Ok(link),
        Err(e) if !link.connection.status().connected() => Err(BrokerError::Lost {
            detail: " while declaring the queues".into(),
            source: Some(e.into()),
        }),
        Err(e) => Err(e),
    }
}

async fn open_link(args: &AmqpArgs) -> Result<Link, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name("scoring-fleet".into());
    // amqps:// verifies the broker against the system's roots, plus --amqp-ca-cert's.
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: match &args.ca_cert {
            Some(path) => Some(
                std::fs::read_to_string(path).map_err(|e| BrokerError::Other {
                    message: format!(
                        "cannot read the broker's CA certificates {} (--amqp-ca-cert)",
                        path.display()
                    ),
                    source: e.into(),
                })?,
            ),
            None => None,
        },
    };
    let runtime = lapin::runtime::default_runtime().map_err(|e| classify(&args.url, e))?;
    let connection = Connection::connect_with_config(&args.url, properties, tls, runtime)
        .await
        .map_err(|e| classify(&args.url, e))?;
    let publisher = connection
        .create_channel()
        .await
        .map_err(|e| lost("opening a channel", e))?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| lost("asking for publisher confirms", e))?;
    Ok(Link {
        connection: Arc::new(connection),
        publisher,
    })
}

async fn declare_topology(channel: &Channel, args: &AmqpArgs) -> Result<(), BrokerError> {
    let names = &args.queues;
    let quorum = || {
        let mut table = FieldTable::default();
        table.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        table
    };
    let mut work = quorum();
    work.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from("")),
    );
    work.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString(LongString::from(names.dead_letter.as_str())),
    );
    work.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongInt(args.delivery_limit as i32),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    // One collector at a time: the broker delivers results to a single consumer and keeps the
    // others as standbys, handing over when the active one goes away. Job state then lives with
    // one process (no job split between two), and a standby resumes from what is stored.
    let mut results = work.clone();
    results.insert(
        ShortString::from("x-single-active-consumer"),
        AMQPValue::Boolean(true),
    );
    for (name, arguments) in [
        (&names.dead_letter, quorum()),
        (&names.partitions, work),
        (&names.results, results),
    ] {
        channel
            .queue_declare(ShortString::from(name.as_str()), durable, arguments)
            .await
            .map_err(|e| BrokerError::Other {
                message: format!(
                    "cannot declare queue {name} (if it exists with other settings, delete it \
                     or choose other queue names)"
                ),
                source: e.into(),
            })?;
    }
    Ok(())
}

impl Broker for AmqpBroker {
    type Consumer = AmqpConsumer;

    async fn publish(&self, queue: Queue, payload: Vec<u8>) -> Result<(), BrokerError> {
        let name = self.names().name(queue).to_owned();
        self.confirmed_publish(&name, &payload, FieldTable::default())
            .await
    }

    async fn consume(&self, queue: Queue, prefetch: u16) -> Result<AmqpConsumer, BrokerError> {
        let mut consumer = AmqpConsumer {
            broker: self.clone(),
            queue: self.names().name(queue).to_owned(),
            prefetch,
            stream: None,
            generation: u64::MAX,
            subscriptions: 0,
        };
        // Subscribing right after connecting can meet a connection the broker has just dropped
        // (see `open_and_declare`); `subscribe` reconnects, within the reconnect time.
        let deadline = Instant::now() + Duration::from_secs(self.inner.args.reconnect_secs);
        loop {
            match consumer.subscribe().await {
                Ok(()) => return Ok(consumer),
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tracing::warn!(error = %e, queue = %consumer.queue, "cannot subscribe yet; retrying");
                    tokio::time::sleep(backoff(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn ready_count(&self, queue: Queue) -> Result<u64, BrokerError> {
        let link = self.link().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let name = self.names().name(queue);
        let declared = link
            .publisher
            .queue_declare(ShortString::from(name), options, FieldTable::default())
            .await
            .map_err(|e| BrokerError::Other {
                message: format!("cannot inspect queue {name}"),
                source: e.into(),
            })?;
        Ok(u64::from(declared.message_count()))
    }
}

/// A RabbitMQ consumer of one queue.
#[derive(Debug)]
pub struct AmqpConsumer {
    broker: AmqpBroker,
    queue: String,
    prefetch: u16,
    stream: Option<(Channel, lapin::Consumer)>,
    generation: u64,
    subscriptions: u64,
}

impl AmqpConsumer {
    async fn subscribe(&mut self) -> Result<(), BrokerError> {
        let link = self.broker.link().await?;
        let lost = |e| lost("subscribing", e);
        let channel = link.connection.create_channel().await.map_err(lost)?;
        channel
            .basic_qos(self.prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(lost)?;
        let consumer = channel
            .basic_consume(
                ShortString::from(self.queue.as_str()),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(lost)?;
        self.generation = self.broker.inner.generation.load(Ordering::SeqCst);
        self.stream = Some((channel, consumer));
        self.subscriptions += 1;
        Ok(())
    }
}

impl Consumer for AmqpConsumer {
    type Delivery = AmqpDelivery;

    async fn next(&mut self) -> Result<Option<AmqpDelivery>, BrokerError> {
        loop {
            if self.stream.is_none()
                || self.generation != self.broker.inner.generation.load(Ordering::SeqCst)
            {
                self.subscribe().await?;
            }
            let (channel, stream) = self.stream.as_mut().expect("subscribed above");
            match stream.next().await {
                Some(Ok(delivery)) => {
                    return Ok(Some(AmqpDelivery {
                        delivery,
                        channel: channel.clone(),
                        broker: self.broker.clone(),
                        settled: false,
                    }));
                }
                // The stream ends or fails when the channel or connection goes away.
                Some(Err(e)) => {
                    tracing::warn!(error = &e as &dyn std::error::Error, queue = %self.queue, "consumer lost its connection; resubscribing")
                }
                None => {
                    tracing::warn!(queue = %self.queue, "consumer cancelled by the broker; resubscribing")
                }
            }
            self.stream = None;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn subscriptions(&self) -> u64 {
        self.subscriptions
    }
}

/// A message delivered by RabbitMQ.
#[derive(Debug)]
pub struct AmqpDelivery {
    delivery: lapin::message::Delivery,
    channel: Channel,
    broker: AmqpBroker,
    settled: bool,
}

impl AmqpDelivery {
    fn settle_error(&self, e: lapin::Error) -> BrokerError {
        // The channel it came on is gone: the broker will deliver the message again.
        BrokerError::Lost {
            detail: " while settling a delivery: it will be delivered again".into(),
            source: Some(e.into()),
        }
    }
}

impl Delivery for AmqpDelivery {
    fn payload(&self) -> &[u8] {
        &self.delivery.data
    }

    fn attempt(&self) -> u32 {
        // Quorum queues count earlier failed deliveries in `x-delivery-count`.
        let count = self
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned())
            .and_then(|v| match v {
                AMQPValue::LongLongInt(n) => u32::try_from(n).ok(),
                AMQPValue::LongInt(n) => u32::try_from(n).ok(),
                AMQPValue::ShortInt(n) => u32::try_from(n).ok(),
                _ => None,
            });
        match count {
            Some(n) => n + 1,
            None if self.delivery.redelivered => 2,
            None => 1,
        }
    }

    fn dead_letter_reason(&self) -> Option<String> {
        let headers = self.delivery.properties.headers().as_ref()?;
        if let Some(AMQPValue::LongString(reason)) = headers.inner().get("x-error") {
            return Some(reason.to_string());
        }
        // Dead-lettered by the broker itself (delivery limit): `x-death` says why.
        headers
            .inner()
            .get("x-death")
            .map(|death| format!("dead-lettered by the broker: {death:?}"))
    }

    async fn ack(mut self) -> Result<(), BrokerError> {
        self.settled = true;
        let tag = self.delivery.delivery_tag;
        self.channel
            .basic_ack(tag, BasicAckOptions::default())
            .await
            .map_err(|e| self.settle_error(e))
    }

    async fn retry(mut self) -> Result<(), BrokerError> {
        self.settled = true;
        let tag = self.delivery.delivery_tag;
        let options = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        self.channel
            .basic_nack(tag, options)
            .await
            .map_err(|e| self.settle_error(e))
    }

    async fn dead_letter(mut self, reason: &str) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("x-error"),
            AMQPValue::LongString(LongString::from(reason)),
        );
        headers.insert(
            ShortString::from("x-original-queue"),
            AMQPValue::LongString(LongString::from(self.delivery.routing_key.as_str())),
        );
        let dead_letter = self.broker.names().dead_letter.clone();
        self.broker
            .confirmed_publish(&dead_letter, &self.delivery.data, headers)
            .await?;
        self.settled = true;
        let tag = self.delivery.delivery_tag;
        self.channel
            .basic_ack(tag, BasicAckOptions::default())
            .await
            .map_err(|e| self.settle_error(e))
    }
}

impl Drop for AmqpDelivery {
    /// Unsettled (the task holding it failed or was cancelled): hand it back at once rather
    /// than leave it unacknowledged until the channel closes.
    fn drop(&mut self) {
        if self.settled || !self.channel.status().connected() {
            return;
        }
        let (channel, tag) = (self.channel.clone(), self.delivery.delivery_tag);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = channel
                    .basic_nack(
                        tag,
                        BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        },
                    )
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("amqp://fleet:s3cret@rabbit:5672/%2f"),
            "amqp://fleet:***@rabbit:5672/%2f"
        );
        assert_eq!(redact("amqp://rabbit:5672"), "amqp://rabbit:5672");
    }
}
