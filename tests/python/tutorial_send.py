#!/usr/bin/env python3
"""The founding tutorial's publisher (send.py) as the tutorial writes it.

    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f python3 tutorial_send.py 'task 1 finished'

Only the connection parameters differ: they come from AMQP_URL (default: localhost, as in the
tutorial) so that tests can point it at their broker. Current pika spells the tutorial's
`type='topic'` as `exchange_type='topic'`. Exits non-zero (pika's traceback on stderr) when
RabbitMQ refuses the declare, e.g. PRECONDITION_FAILED for an exchange declared otherwise.
"""
import os
import sys

import pika

connection = pika.BlockingConnection(pika.URLParameters(os.environ.get('AMQP_URL', 'amqp://guest:guest@localhost:5672/%2F')))
channel = connection.channel()

channel.exchange_declare(exchange='rabbitmq', exchange_type='topic')

message = ' '.join(sys.argv[1:]) or 'Hello World!'
channel.basic_publish(exchange='rabbitmq', routing_key='zjj', body=message)
print(" [x] Sent %r" % message)
connection.close()
