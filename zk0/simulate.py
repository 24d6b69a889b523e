"""`zk0 simulate`: a whole federated run in one process. The one module of zk0/ that imports both
coordinator/ and participant/, since it wires them together (tests/test_layout.py holds every other zk0/
module to importing neither)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from coordinator.server import CoordinatorServer, ServerOptions
from participant.client import ClientOptions, ParticipantClient
from zk0.config import Config
from zk0.data import dataset_name
from zk0.interrupts import Interrupted
from zk0.records import RoundEntry

log = logging.getLogger(__name__)


def simulate(
    config: Config,
    run_dir: Path,
    *,
    device: str,
    progress: bool,
    push_to_hub: str | None = None,
    public: bool = False,
    make_client: Callable[..., ParticipantClient] = ParticipantClient,
) -> list[RoundEntry]:
    """The coordinator's gRPC server on 127.0.0.1 (ephemeral port) and one participant client per configured
    dataset, each in a thread of this process, training one after another on the one device.

    An interrupt (or any error) in the waiting main thread stops the server and sets `stop`, which every
    participant thread checks each batch and between RPCs; the threads are joined before it propagates, so
    no thread is left inside torch or gRPC at exit. The run directory keeps the last completed round.
    `make_client(options, train_lock=, stop=)` builds each participant (bench/hostile_compare.py makes one
    of them an attacker)."""
    options = ServerOptions(
        host="127.0.0.1", insecure=True, device=device, push_to_hub=push_to_hub, public=public
    )
    server = CoordinatorServer(config, run_dir, options)
    port = server.start()
    train_lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def take_part(spec: str) -> None:
        options = ClientOptions(
            coordinator=f"127.0.0.1:{port}",
            dataset=spec,
            name=dataset_name(spec),
            insecure=True,
            device=device,
            progress=progress,
            give_up_s=30.0,
        )
        try:
            make_client(options, train_lock=train_lock, stop=stop).run()
        except Interrupted:
            return  # the main thread is stopping the run and reports it
        except Exception as e:  # noqa: BLE001 - reported; the run stops once no participant is left
            log.error("participant %s failed: %s", spec, e)
            errors.append(e)
            if len(errors) == len(config.data.participants):
                server.stop_event.set()

    threads = [
        threading.Thread(target=take_part, args=(spec,), name=f"zk0-participant-{i}", daemon=True)
        for i, spec in enumerate(config.data.participants)
    ]
    for thread in threads:
        thread.start()
    try:
        server.wait()
    except BaseException:
        stop.set()
        server.stop()
        raise
    finally:
        stop.set()  # the run is over: a participant still waiting for a task need not wait out its lease
        for thread in threads:
            thread.join(timeout=60)
    if errors and len(errors) == len(threads):
        raise errors[0]
    return server.store.run.read_records()
