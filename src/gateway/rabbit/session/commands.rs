//! Frames after CONNECTED: SEND, SUBSCRIBE, UNSUBSCRIBE, ACK/NACK and transactions.

use super::*;

impl Session {
    pub(super) fn on_connected_frame(&mut self, frame: Frame) {
        // Transactional SEND/ACK/NACK are buffered until COMMIT.
        if matches!(frame.command, Command::Send | Command::Ack | Command::Nack)
            && let Some(tx) = frame.get("transaction")
        {
            let tx = tx.to_string();
            let receipt = receipt_of(&frame).map(str::to_string);
            match self
                .rare
                .as_mut()
                .and_then(|rare| rare.transactions.get_mut(&tx))
            {
                None => self.send_error(
                    "Bad transaction",
                    &format!("Invalid transaction identifier: \"{tx}\"\n"),
                    receipt.as_deref(),
                ),
                Some(frames) if frames.len() >= MAX_TRANSACTION_ACTIONS => self.send_error(
                    "Transaction too large",
                    &format!("Too many actions in transaction (limit {MAX_TRANSACTION_ACTIONS})"),
                    receipt.as_deref(),
                ),
                Some(frames) => {
                    let mut frame = frame;
                    frame.headers.remove("transaction");
                    if frame.command == Command::Send {
                        // Its RECEIPT follows the broker's confirm after COMMIT.
                        frames.push(frame);
                    } else {
                        // ACK/NACK are receipted when buffered, as RabbitMQ does.
                        frame.headers.remove("receipt");
                        frames.push(frame);
                        self.receipt(receipt);
                    }
                }
            }
            return;
        }
        match frame.command {
            Command::Send => self.on_send(frame),
            Command::Subscribe => self.on_subscribe(frame),
            Command::Unsubscribe => self.on_unsubscribe(frame),
            Command::Ack | Command::Nack => self.on_settle(frame),
            Command::Begin | Command::Commit | Command::Abort => self.on_transaction(frame),
            Command::Disconnect => {
                let receipt = receipt_of(&frame).map(str::to_string);
                self.in_flight = Some(InFlight::Flush { receipt });
                self.actions.push_back(Action::Broker(BrokerRequest::Flush));
            }
            _ => self.send_error(
                "Bad command",
                &format!("Could not interpret command \"{}\"\n", frame.command),
                receipt_of(&frame),
            ),
        }
    }

    pub(super) fn on_send(&mut self, frame: Frame) {
        if self.refused(&frame, "send") {
            return;
        }
        let receipt = receipt_of(&frame).map(str::to_string);
        let plan = match plan::plan_send(&frame.headers, &self.config.plan) {
            Ok(plan) => plan,
            Err(e) => {
                self.send_error(e.summary(), &e.detail(), receipt.as_deref());
                return;
            }
        };
        let body = frame.body;
        // A reply-to of /temp-queue/<id> needs its reply queue first.
        if let Some(temp_id) = plan.reply_to_temp_queue.clone() {
            match self
                .rare
                .as_ref()
                .and_then(|rare| rare.reply_queues.get(&temp_id))
            {
                Some(queue) => {
                    let mut plan = plan;
                    plan.properties = plan.properties.with_reply_to(queue.as_str().into());
                    self.publish(plan, body, receipt);
                }
                None => {
                    let temp_plan = plan::temp_queue_plan(&temp_id);
                    self.in_flight = Some(InFlight::TempQueue {
                        temp_id,
                        consumer_tag: temp_plan.consumer_tag.clone(),
                        send: Box::new(PendingSend {
                            plan,
                            body,
                            receipt,
                        }),
                    });
                    self.actions
                        .push_back(Action::Broker(BrokerRequest::Channel(
                            ChannelOp::CreateTempQueue(temp_plan),
                        )));
                }
            }
            return;
        }
        self.publish(plan, body, receipt);
    }

    pub(super) fn publish(&mut self, plan: SendPlan, body: Bytes, receipt: Option<String>) {
        // `/queue/` declares happen once per session (RabbitMQ's route_state).
        let declare_queue = plan
            .declare
            .filter(|d| !(d.once_per_session && self.declared(&d.queue)));
        let confirm_id = receipt.map(|r| {
            let id = self.next_confirm_id;
            self.next_confirm_id += 1;
            self.rare().pending_receipts.insert(id, r);
            id
        });
        self.in_flight = Some(InFlight::Publish {
            declared_queue: declare_queue
                .as_ref()
                .filter(|d| d.once_per_session)
                .map(|d| d.queue.clone()),
        });
        self.actions
            .push_back(Action::Broker(BrokerRequest::Channel(ChannelOp::Publish(
                Box::new(PublishRequest {
                    route: plan.route,
                    properties: plan.properties,
                    body,
                    mandatory: confirm_id.is_some(),
                    confirm_id,
                    declare_queue,
                }),
            ))));
    }

    pub(super) fn on_subscribe(&mut self, frame: Frame) {
        if self.refused(&frame, "subscribe") {
            return;
        }
        let receipt = receipt_of(&frame).map(str::to_string);
        let mut plan = match plan::plan_subscribe(&frame.headers, &self.config.plan) {
            Ok(plan) => plan,
            Err(e) => {
                self.send_error(e.summary(), &e.detail(), receipt.as_deref());
                return;
            }
        };
        if self.subscriptions.contains_key(&plan.consumer_tag) {
            self.send_error(
                "Duplicated subscription identifier",
                &format!(
                    "A subscription identified by '{}' already exists.",
                    plan.consumer_tag
                ),
                receipt.as_deref(),
            );
            self.close(CloseReason::ProtocolError);
            return;
        }
        if self.subscriptions.len() >= self.config.max_subscriptions {
            self.send_error(
                "Too many subscriptions",
                &format!(
                    "This session already has {} subscriptions (limit {}).\n",
                    self.subscriptions.len(),
                    self.config.max_subscriptions
                ),
                receipt.as_deref(),
            );
            return;
        }
        if plan
            .declare
            .as_ref()
            .is_some_and(|d| d.once_per_session && self.declared(&d.queue))
        {
            plan.declare = None;
        }
        let is_topic = matches!(
            frame.get("destination").map(destination::parse),
            Some(Ok(Destination::Topic(_)))
        );
        let subscription = Subscription {
            ack: plan.ack,
            durable_queue: (is_topic && plan.durable_subscription).then(|| plan.queue.clone()),
        };
        self.in_flight = Some(InFlight::Subscribe {
            consumer_tag: plan.consumer_tag.clone(),
            subscription,
            receipt,
        });
        self.actions
            .push_back(Action::Broker(BrokerRequest::Channel(
                ChannelOp::Subscribe(Box::new(plan)),
            )));
    }

    pub(super) fn on_unsubscribe(&mut self, frame: Frame) {
        let receipt = receipt_of(&frame).map(str::to_string);
        if let Err(e) = plan::require_id_for_durable(&frame.headers) {
            self.send_error(e.summary(), &e.detail(), receipt.as_deref());
            return;
        }
        let (consumer_tag, description) = match plan::consumer_tag("UNSUBSCRIBE", &frame.headers) {
            Ok(tag) => tag,
            Err(e) => {
                self.send_error(e.summary(), &e.detail(), receipt.as_deref());
                return;
            }
        };
        let Some(subscription) = self.subscriptions.remove(&consumer_tag) else {
            self.send_error(
                "No subscription found",
                &format!(
                    "UNSUBSCRIBE must refer to an existing subscription.\nSubscription to \"{description}\" not found.\n"
                ),
                receipt.as_deref(),
            );
            return;
        };
        let delete_queue = if plan::has_durable_header(&frame.headers) {
            subscription.durable_queue
        } else {
            None
        };
        self.in_flight = Some(InFlight::Unsubscribe { receipt });
        self.actions
            .push_back(Action::Broker(BrokerRequest::Channel(
                ChannelOp::Unsubscribe {
                    consumer_tag,
                    delete_queue,
                },
            )));
    }

    pub(super) fn on_settle(&mut self, frame: Frame) {
        let receipt = receipt_of(&frame).map(str::to_string);
        let ack_id = match ids::ack_id(frame.command.as_str(), self.version, &frame.headers) {
            // An id issued to another session is as invalid as a malformed one.
            Ok(id) if id.session_id == self.session_id => id,
            Ok(_) => {
                let header = ids::ack_header_name(self.version);
                self.send_error(
                    "Invalid header",
                    &format!(
                        "'{}' must include a valid \"{header}\" header\n",
                        frame.command
                    ),
                    receipt.as_deref(),
                );
                return;
            }
            Err(e) => {
                self.send_error(e.summary(), &e.detail(), receipt.as_deref());
                return;
            }
        };
        let delivery_tag = ack_id.delivery_tag;
        let unacked = &mut self.rare().unacked;
        let position = unacked
            .iter()
            .position(|p| p.delivery_tag == delivery_tag && p.consumer_tag == ack_id.consumer_tag);
        let Some(position) = position else {
            self.send_error(
                "Message not found",
                &format!("unknown delivery tag {delivery_tag}\n"),
                receipt.as_deref(),
            );
            return;
        };
        let multiple = unacked[position].multiple;
        if multiple {
            // Cumulative: settles every older delivery of the session, as basic.ack(multiple) does.
            unacked.drain(..=position);
        } else {
            unacked.remove(position);
        }
        let request = if frame.command == Command::Ack {
            ChannelOp::Ack {
                delivery_tag,
                multiple,
            }
        } else {
            let requeue = !matches!(frame.get("requeue"), Some("false" | "False"));
            ChannelOp::Nack {
                delivery_tag,
                multiple,
                requeue,
            }
        };
        self.in_flight = Some(InFlight::Settle { receipt });
        self.actions
            .push_back(Action::Broker(BrokerRequest::Channel(request)));
    }

    pub(super) fn on_transaction(&mut self, frame: Frame) {
        let receipt = receipt_of(&frame).map(str::to_string);
        let name = frame.command.as_str().to_string();
        let Some(tx) = frame.get("transaction").map(str::to_string) else {
            self.send_error(
                "Missing transaction",
                &format!("'{name}' must include a 'transaction' header\n"),
                receipt.as_deref(),
            );
            return;
        };
        match frame.command {
            Command::Begin => {
                if self.rare().transactions.len() >= MAX_TRANSACTIONS {
                    self.send_error(
                        "Transaction limit exceeded",
                        &format!("Too many concurrent transactions (limit {MAX_TRANSACTIONS})"),
                        receipt.as_deref(),
                    );
                    return;
                }
                self.rare().transactions.insert(tx, Vec::new());
                self.receipt(receipt);
            }
            Command::Commit => match self.rare().transactions.remove(&tx) {
                Some(frames) => {
                    // Replay in order ahead of anything else; the receipt follows the replay.
                    let mut replay: VecDeque<Work> = frames.into_iter().map(Work::Frame).collect();
                    if let Some(r) = receipt {
                        replay.push_back(Work::Receipt(r));
                    }
                    while let Some(work) = replay.pop_back() {
                        self.work.push_front(work);
                    }
                }
                None => self.bad_transaction(&tx, receipt),
            },
            _ => match self.rare().transactions.remove(&tx) {
                Some(_) => self.receipt(receipt),
                None => self.bad_transaction(&tx, receipt),
            },
        }
    }

    pub(super) fn bad_transaction(&mut self, tx: &str, receipt: Option<String>) {
        self.send_error(
            "Bad transaction",
            &format!("Invalid transaction identifier: \"{tx}\"\n"),
            receipt.as_deref(),
        );
    }
}
