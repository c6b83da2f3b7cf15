"""Tooltips of the icon buttons: a symbol alone does not say what a button does.

Gradio's Button has no title attribute, so the page sets `title` (shown on hover) and `aria-label`
(read by screen readers) from this table, by the end of the element id, as AUTOMATIC1111's hints do.
"""

from __future__ import annotations

import json

TOOLTIPS = {
    "refresh_checkpoints": "Refresh the lists of checkpoints and VAEs (after adding or removing files)",
    "res_switch_btn": "Swap width and height",
    "random_seed": "Use a random seed (-1) for each generation",
    "reuse_seed": "Reuse the seed of the selected image",
    "style_edit": "Edit styles: create, change or delete a saved style",
    "style_apply": "Apply the selected styles to the prompt and negative prompt",
}

# Tabs draw their content when first shown, so titles are set again whenever the page changes.
TOOLTIPS_JS = f"""() => {{
  const tips = {json.dumps(TOOLTIPS)};
  const apply = () => {{
    for (const [suffix, tip] of Object.entries(tips)) {{
      for (const el of document.querySelectorAll(`[id$="${{suffix}}"]`)) {{
        const button = el.matches('button') ? el : el.querySelector('button');
        if (button && button.title !== tip) {{ button.title = tip; button.setAttribute('aria-label', tip); }}
      }}
    }}
  }};
  apply();
  let queued = false;
  new MutationObserver(() => {{
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {{ queued = false; apply(); }});
  }}).observe(document.body, {{childList: true, subtree: true}});
}}"""
