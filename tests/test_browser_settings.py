"""Settings changed on the page are saved to config.json, used without a restart, and still there
after one."""

from __future__ import annotations

import json

from browser import (choose, chromium_page, data_dir_with_embedded_model, open_tab, open_ui, save_artifact,
                     set_number)
from server_process import ServerProcess


def test_settings_survive_a_restart(tmp_path):
    data = data_dir_with_embedded_model(tmp_path)
    with ServerProcess(data_dir=data) as server, chromium_page((1280, 900)) as page:
        open_ui(page, server.url)
        open_tab(page, "tab_settings")
        set_number(page, "setting_show_progress_every_n_steps", 5)
        choose(page, "setting_randn_source", "NV")
        page.locator("#setting_live_previews_enable input").uncheck()
        page.locator("#settings_submit").click()
        page.wait_for_function("document.querySelector('#settings_result').innerText.includes('3 settings changed')")
        # Used at once: the next generation's parameters carry the new noise source.
        open_tab(page, "tab_txt2img")
        page.locator("#txt2img_prompt textarea").fill("a red circle")
        set_number(page, "txt2img_steps", 4)
        page.locator("#txt2img_generate").click()
        page.wait_for_function("document.querySelector('#txt2img_info textarea').value.includes('RNG: NV')",
                               timeout=90_000)
        assert page.errors == []

    saved = json.loads((data / "config.json").read_text())
    assert saved["show_progress_every_n_steps"] == 5
    assert saved["randn_source"] == "NV" and saved["live_previews_enable"] is False

    with ServerProcess(data_dir=data) as server, chromium_page((1280, 900)) as page:
        open_ui(page, server.url)
        open_tab(page, "tab_settings")
        assert page.locator("#setting_show_progress_every_n_steps input").input_value() == "5"
        assert page.locator("#setting_randn_source input").input_value() == "NV"
        assert not page.locator("#setting_live_previews_enable input").is_checked()
        save_artifact(page, "settings_after_restart")
        assert page.errors == []
