"""The crash harness: WeCom (the simulator), a ``wxkf up`` hub and a ``wxkf puppet``, each a real child
process a test can SIGKILL and restart, and the verdict on what the bot saw and the customers received.

``transport`` picks how the puppet is reached: ``"direct"`` (WeCom calls the puppet, no hub),
``"http"`` (WeCom calls the hub, which POSTs to the puppet) or ``"ws"`` (the puppet connects out to
the hub's socket). The puppet runs :mod:`tests.support.journal_bot`, which journals every item it is
handed and answers each customer twice; the simulator, which outlives everything else, records what
each customer received. :func:`assert_handled_once_in_order` and :func:`assert_answered_once` read
those two records after the test is done killing things.

Every wait is on observed progress (a journal line, a log line, a delivery's outcome), never a sleep.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from simulator import SimConfig
from tests.support.corp import Corp, CorpKeys, corp_spec
from tests.support.journal_bot import HANG
from tests.support.puppet_process import PuppetProcess, puppet_env
from tests.support.services import ServiceProcess, free_port, service_env
from tests.support.simulator_process import SimulatorProcess
from tests.support.waiting import wait_until
from wxkf.settings import Settings

Transport = Literal["direct", "http", "ws"]

#: WeCom's rules, with callbacks retried quickly (3 retries, then given up), token-less pulls not
#: rate-limited (start-up catch-ups are immediate) and room for two replies to every item
CRASH_SIM_CONFIG = SimConfig(
    callback_timeout=2.0,
    callback_retry_delays=(0.2, 0.2, 0.2),
    sync_tokenless_rate=None,
    send_limit=1000,
)

#: the log line that says the puppet serves its account, per transport
SERVING = {
    "direct": "puppet listening",
    "http": "registered with the manager",
    "ws": "over the manager's socket",
}


@dataclass(frozen=True)
class Kind:
    """One kind of item: what the simulator's control API takes to produce it, and the class of
    :mod:`puppets.messages` the bot is handed it as."""

    handed_as: str
    item: dict[str, Any]
    #: an event about the account itself (no customer: nobody to answer)
    account_level: bool = False


def message(msgtype: str, handed_as: str, **body: Any) -> Kind:
    return Kind(handed_as, {"msgtype": msgtype, msgtype: body})


def event(event_type: str, handed_as: str, **fields: Any) -> Kind:
    return Kind(handed_as, {"event_type": event_type, **fields})


#: one item of every receive type and every kf event of the protocol reference (§3), and one of a
#: type and of an event no SDK knows yet (handed over raw, never dropped)
EVERY_KIND: list[Kind] = [
    message("text", "TextMessage", content="hello"),
    message("image", "ImageMessage"),  # the simulator fills in a media_id
    message("voice", "VoiceMessage"),
    message("video", "VideoMessage"),
    message("file", "FileMessage"),
    message("location", "LocationMessage", latitude=23.1, longitude=113.3, name="Tower", address="1 Rd"),
    message("link", "LinkMessage", title="A", desc="B", url="https://example.com/a", pic_url=""),
    message("business_card", "BusinessCardMessage", userid="zhangsan"),
    message("miniprogram", "MiniprogramMessage", appid="wx01", title="T", thumb_media_id="M", pagepath="p"),
    message("text", "MenuClick", content="Yes", menu_id="101"),  # a click on a msgmenu option
    message("msgmenu", "MenuMessage", head_content="Pick", list=[{"type": "click", "click": {"id": "1"}}]),
    message("channels_shop_product", "ChannelsShopProductMessage", product_id="p1", title="Tea"),
    message("channels_shop_order", "ChannelsShopOrderMessage", order_id="o1", state="paid"),
    message("channels", "ChannelsMessage", sub_type=1, nickname="N", title="T"),
    message("merged_msg", "MergedMessage", title="Chat", item=[{"msgtype": "text", "msg_content": "{}"}]),
    message("meeting", "MeetingMessage", meetingid="m1"),
    message("schedule", "ScheduleMessage", scheduleid="s1"),
    message("note", "NoteMessage"),
    message("hologram", "RawMessage", id="h1"),
    event("enter_session", "EnterSession", scene="chaos", scene_param="p", welcome=False),
    event("session_status_change", "SessionStatusChange", change_type=1, new_servicer_userid="zhangsan"),
    event("user_recall_msg", "UserRecallMsg", recall_msgid="recalled"),
    event("servicer_recall_msg", "ServicerRecallMsg", recall_msgid="recalled", servicer_userid="zhangsan"),
    event("reject_customer_msg_switch_change", "RejectCustomerMsgSwitchChange", reject_switch=0),
    event("msg_send_fail", "MsgSendFail", fail_msgid="neversent", fail_type=0),
    Kind("ServicerStatusChange", {"event_type": "servicer_status_change", "status": 1}, account_level=True),
    event("holo_event", "UnknownEvent", detail="x"),
]


def hang() -> Kind:
    """A text the journal bot holds forever (until its process is killed) the first time."""
    return message("text", "TextMessage", content=HANG)


def mixed(count: int, customers: list[str], start: int = 0) -> list[tuple[str, Kind]]:
    """``count`` items ``(customer, kind)``: customers in turn, each going through :data:`EVERY_KIND`
    from its first item (a text, so that replies are allowed: WeCom answers only customers who wrote)."""
    return [
        (customers[n % len(customers)], EVERY_KIND[n // len(customers) % len(EVERY_KIND)])
        for n in range(start, start + count)
    ]


@dataclass
class Journal:
    """The journal bot's file: ``start`` and ``end`` lines, oldest first."""

    path: Path

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def started(self) -> set[str]:
        return {line["msgid"] for line in self.lines() if line["at"] == "start"}

    def ended(self) -> set[str]:
        return {line["msgid"] for line in self.lines() if line["at"] == "end"}


@dataclass
class CrashRig:
    """The running processes, the corp, and what was written to each customer (the expected order)."""

    transport: Transport
    corp: Corp
    simulator: SimulatorProcess
    hub: ServiceProcess | None
    puppet: PuppetProcess
    journal: Journal
    customers: list[str]
    #: customer ("" for the account's own events) -> the msgids written, in order
    written: dict[str, list[str]] = field(default_factory=dict)
    #: msgid -> the class the bot should be handed it as
    handed_as: dict[str, str] = field(default_factory=dict)
    killed_pids: set[int] = field(default_factory=set)
    serving_times: int = 0

    async def write(self, customer: str, kind: Kind) -> dict[str, Any]:
        """Write one item (a message from ``customer``, or an event); the simulator's answer."""
        who = "" if kind.account_level else customer
        answer = await self.corp.writes(kind.item, who or None)
        self.written.setdefault(who, []).append(answer["msgid"])
        self.handed_as[answer["msgid"]] = kind.handed_as
        return answer

    async def write_all(self, items: Iterable[tuple[str, Kind]]) -> list[dict[str, Any]]:
        return [await self.write(customer, kind) for customer, kind in items]

    def everything(self) -> set[str]:
        return {msgid for msgids in self.written.values() for msgid in msgids}

    async def until(self, check: Callable[[Journal], bool], what: str, timeout: float = 60.0) -> None:
        async def holds() -> bool:
            return check(self.journal)

        await self._wait(holds, timeout, what)

    async def _wait(self, check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
        """:func:`wait_until`, with the puppet's post-mortem in the failure."""
        try:
            await wait_until(check, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.puppet_post_mortem()}") from None

    async def all_handled(self, timeout: float = 60.0) -> None:
        """Until every item written so far has an ``end`` line."""
        expected = self.everything()
        await self.until(
            lambda journal: journal.ended() >= expected, f"{len(expected)} items handled", timeout
        )

    async def serving(self, timeout: float = 60.0) -> None:
        """Until the puppet serves its account once more than before (registered, proven, listening)."""
        self.serving_times += 1

        async def serves() -> bool:
            return self.puppet.log().count(SERVING[self.transport]) >= self.serving_times

        await self._wait(serves, timeout, f"the puppet serving (time {self.serving_times})")

    def puppet_post_mortem(self) -> str:
        """Whether the puppet still runs and, if it does, its threads' stacks (SIGABRT makes the
        faulthandler the harness enables write them to its log) and its log's end."""
        process = self.puppet.process
        assert process is not None
        if process.poll() is None:
            process.send_signal(signal.SIGABRT)
            process.wait(timeout=10)
            state = "the puppet was still running (aborted for its stacks)"
        else:
            state = f"the puppet had exited with {process.returncode}"
        return f"{state}; its log ends:\n{self.puppet.log()[-6000:]}"

    def kill_puppet(self) -> None:
        assert self.puppet.process is not None
        self.killed_pids.add(self.puppet.process.pid)
        self.puppet.kill()

    async def start_puppet(self) -> None:
        await self.puppet.start()
        await self.serving()

    def kill_hub(self) -> None:
        assert self.hub is not None
        self.hub.kill()

    async def restart_hub(self) -> None:
        """The hub again, on the same database and data dir; until the puppet serves through it."""
        assert self.hub is not None
        await self.hub.start()
        await self.serving()  # an HTTP puppet's heartbeat met the outage: it registers again


@asynccontextmanager
async def crash_rig(
    tmp_path: Path,
    settings: Settings,
    transport: Transport,
    *,
    customers: Iterable[str] = ("wmBOB",),
    work: float = 0.02,
    config: SimConfig = CRASH_SIM_CONFIG,
    **puppet_options: Any,
) -> AsyncIterator[CrashRig]:
    """Start the simulator (seeded with one corp, account ``wkSUPPORT``), the hub (unless ``direct``)
    and the puppet (its ``puppets.toml`` top-level settings overridden by ``puppet_options``); yield
    once the puppet serves. Everything still running is stopped on exit."""
    customers = list(customers)
    spec = corp_spec(customers=customers)
    keys = CorpKeys.of(spec)
    simulator = SimulatorProcess(config, [spec], tmp_path, free_port())
    hub: ServiceProcess | None = None
    puppet: PuppetProcess | None = None
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        try:
            await simulator.start()
            corp = Corp(simulator.url, http, keys.corpid, keys.secret, keys.token, keys.aes_key)
            wecom = simulator.url + "/cgi-bin"
            port = free_port()
            options: dict[str, Any] = {"data_dir": str(tmp_path / "puppet")}
            if transport != "direct":
                hub = ServiceProcess(
                    "up",
                    service_env(settings, tmp_path / "hub", wecom_api_base=wecom),
                    tmp_path / "hub.log",
                    free_port(),
                )
                await hub.start()
                options |= {"manager": hub.url, "heartbeat_interval": 0.5}
                options |= (
                    {"transport": "ws"}
                    if transport == "ws"
                    else {"self_endpoint": f"http://127.0.0.1:{port}"}
                )
            options |= puppet_options
            (tmp_path / "puppets.toml").write_text(corp.config_toml(port, **options))
            env = puppet_env(settings, wecom, keys.secret)
            env |= {"CRASH_JOURNAL": str(tmp_path / "journal"), "CRASH_WORK": str(work)}
            env["PYTHONFAULTHANDLER"] = "1"  # see CrashRig.puppet_post_mortem
            args = ["--bot", "tests.support.journal_bot:bot", "--config", str(tmp_path / "puppets.toml")]
            puppet = PuppetProcess(args, env, tmp_path / "puppet.log", port)
            journal = Journal(tmp_path / "journal")
            rig = CrashRig(transport, corp, simulator, hub, puppet, journal, customers)
            await rig.start_puppet()
            await corp.set_callback(f"{hub.url}/callback/{corp.corpid}" if hub else f"{puppet.url}/callback")
            yield rig
        finally:
            if puppet is not None:
                puppet.stop()
            for service in (hub, simulator):
                if service is not None:
                    service.discard()


def assert_handled_once_in_order(rig: CrashRig, *, hung: Iterable[str] = ()) -> None:
    """The bot saw every item written, as its class, in order per customer; an item handed again
    directly follows its own earlier start, in a later run whose predecessor was SIGKILLed, marked as
    a redelivery and first of its customer in that run (the one handler that was running at the
    kill). Each item in ``hung`` (held by the bot until a kill) was handed again that way."""
    lines = rig.journal.lines()
    assert rig.journal.ended() >= rig.everything(), "an item was never handled to the end"
    starts = [line for line in lines if line["at"] == "start"]
    for customer, expected in rig.written.items():
        mine = [line for line in starts if line["customer"] == customer]
        handed: list[str] = []
        previous: dict[str, Any] | None = None
        first_in_run: set[int] = set()
        for line in mine:
            assert line["class"] == rig.handed_as[line["msgid"]], f"{line} handed as the wrong class"
            if line["redelivery"]:
                assert line["pid"] not in first_in_run, f"redelivery of {line} is not first in its run"
            first_in_run.add(line["pid"])
            if previous is not None and previous["msgid"] == line["msgid"]:
                assert line["redelivery"], f"{line['msgid']} handed twice, not marked a redelivery"
                assert previous["pid"] in rig.killed_pids and previous["pid"] != line["pid"], (
                    f"{line['msgid']} handed again without a kill"
                )
            else:
                handed.append(line["msgid"])
            previous = line
        assert handed == expected, f"customer {customer!r}: handled out of order or not at all"
    for msgid in hung:
        assert any(line["msgid"] == msgid and line["redelivery"] for line in starts), (
            f"{msgid} not redelivered"
        )


async def assert_answered_once(rig: CrashRig) -> None:
    """Each customer received ``got: <msgid>`` and ``done: <msgid>`` for every item about them, once
    each, in order, and nothing else."""
    for customer, msgids in rig.written.items():
        if not customer:
            continue
        received = await rig.corp.received_items(customer)
        texts = [item["text"]["content"] for item in received if item["msgtype"] == "text"]
        expected = [f"{step}: {msgid}" for msgid in msgids for step in ("got", "done")]
        assert texts == expected, f"customer {customer}: replies missing, repeated or out of order"
        assert len({item["msgid"] for item in received}) == len(received)


async def two_puppet_kills_and_a_hub_kill(rig: CrashRig, count: int = 200) -> None:
    """``count`` items of every kind from the rig's customers while the puppet is SIGKILLed twice in
    the middle of handling (each time holding a ``hang`` item, with other customers' handlers running)
    and restarted, and the hub SIGKILLed and restarted on its data dir after items whose callbacks
    WeCom gave up on; then the verdict."""
    items = mixed(count, rig.customers)
    first, second = int(count * 0.22), int(count * 0.65)
    items[first] = (items[first][0], hang())
    items[second] = (items[second][0], hang())
    marks = [0, int(count * 0.45), int(count * 0.55), int(count * 0.8), int(count * 0.85), int(count * 0.92)]
    batches = [items[a:b] for a, b in zip(marks, [*marks[1:], count], strict=True)]

    written = await rig.write_all(batches[0])
    hung = [written[first]["msgid"]]
    await rig.until(
        lambda journal: hung[0] in journal.started() and len(journal.started()) >= first,
        "the first hang and others started",
    )
    rig.kill_puppet()
    await rig.write_all(batches[1])  # while the puppet is down
    await rig.start_puppet()
    written = await rig.write_all(batches[2])
    hung.append(written[second - marks[2]]["msgid"])
    await rig.until(
        lambda journal: hung[1] in journal.started() and len(journal.started()) >= second,
        "the second hang and others started",
    )
    rig.kill_puppet()
    await rig.write_all(batches[3])
    await rig.start_puppet()
    await rig.all_handled()  # nothing in flight: what comes next can only arrive by a catch-up

    rig.kill_hub()
    dark = await rig.write_all(batches[4])  # WeCom's callbacks fail, are retried, and given up
    for answer in dark:
        for delivery in answer["deliveries"]:
            outcome = await rig.corp.http.get(
                f"{rig.simulator.url}/sim/deliveries/{delivery['id']}", params={"wait": "true"}
            )
            assert outcome.json()["outcome"] == "failed", outcome.text
    await rig.restart_hub()
    await rig.all_handled()  # the puppet caught up by itself: no callback will ever bring these
    await rig.write_all(batches[5])
    await rig.all_handled()

    assert len(rig.everything()) == count
    assert set(rig.handed_as.values()) == {kind.handed_as for kind in EVERY_KIND}  # every kind went
    assert_handled_once_in_order(rig, hung=hung)
    await assert_answered_once(rig)
