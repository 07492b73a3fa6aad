"""``edgeloop demo --annotator browser``'s wiring without the demo: the console it starts with a
fresh account, a person (Playwright, keyboard only) accepting hard examples, and the demo's
watch counting each label once with the domain the camera showed."""

from __future__ import annotations

import asyncio
import time

import pytest
from test_cloud_daemon import JOB, NS, wait_for
from test_console import hard_examples_and_a_dataset_node, sample_count
from test_live_view import CHROMIUM, CHROMIUM_ARGS

from demo.browser_annotator import (
    Label,
    LabelTally,
    console_for_a_person,
    domain_at,
    watch_labels,
)
from edgeloop.cancellation import cancel_and_wait
from edgeloop.connection import ConnectionOptions
from edgeloop.ports import free_port
from protocol.dataset_index import read_index


def test_a_label_gets_the_domain_the_camera_showed_and_counts_once():
    switches = [{"time": 10.0, "domain": "day"}, {"time": 20.0, "domain": "night"}]
    assert domain_at(switches, 5.0) is None
    assert domain_at(switches, 10.0) == "day" and domain_at(switches, 19.9) == "day"
    assert domain_at(switches, 25.0) == "night" and domain_at(switches, None) is None
    tally = LabelTally()
    items = [{"id": "a", "time": 12.0, "labelled": True}, {"id": "b", "time": 22.0},
             {"id": "c", "labelled": True}]
    assert tally.new_labels(items, switches) == [Label("a", 12.0, "day"),
                                                 Label("c", None, None)]
    items[1]["labelled"] = True
    assert tally.new_labels(items, switches) == [Label("b", 22.0, "night")]
    assert tally.new_labels(items, switches) == []
    assert tally.per_domain == {"day": 1, "night": 1, "unknown domain": 1}


@pytest.mark.broker
@pytest.mark.timeout(240)
@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="Debian's chromium is not installed (/usr/bin/chromium)")
async def test_a_person_labels_in_the_demos_console_and_the_demo_counts_it(broker, tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api")
    labels: list[Label] = []
    switches = [{"time": time.time() - 3600, "domain": "night"}]
    async with hard_examples_and_a_dataset_node(broker.url, tmp_path) as (daemon, ids, data), \
            console_for_a_person(ConnectionOptions(broker=broker.url), tmp_path / "console",
                                 free_port(), f"{NS}/{JOB}") as (console, account), \
            playwright_api.async_playwright() as pw:
        password_file = tmp_path / "console" / "console.passwd"
        assert oct(password_file.stat().st_mode & 0o777) == "0o600"
        assert account.password not in password_file.read_text()
        watch = asyncio.create_task(watch_labels(console, NS, JOB, LabelTally(),
                                                 lambda: switches, labels.extend, every_s=0.2))
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            await page.goto(account.url + "/")
            await page.wait_for_url("**/login**")
            await page.fill("#user", account.user)
            await page.fill("#password", account.password)
            await page.click("button[type=submit]")
            await page.wait_for_selector("body[data-ready='1']")
            example = ""
            for _ in range(2):  # the model's boxes as proposed: one key per example
                shown = await page.wait_for_function(
                    "previous => { const c = document.querySelector('#canvas');"
                    " return c.dataset.id && c.dataset.id !== previous"
                    " && document.querySelectorAll('#boxes tbody tr').length"
                    " ? c.dataset.id : false; }", arg=example)
                example = await shown.json_value()
                await page.keyboard.press("a")
                await page.wait_for_function(
                    f"document.querySelector('#message').textContent.includes("
                    f"'saved {example[:12]}')")
            await wait_for(lambda: len(labels) == 2, what="the demo to count two labels")
        finally:
            await browser.close()
            await cancel_and_wait(watch)
        await wait_for(lambda: sample_count(daemon) == 2, what="two samples counted")
    assert {label.domain for label in labels} == {"night"}
    assert {label.id for label in labels} < set(ids)
    assert len(read_index(data).samples) == 2
