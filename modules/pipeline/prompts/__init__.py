"""From what the user typed to what the UNet is conditioned on.

    preparation (styles, `#` comments) -> [Midjourney-style parameters: a before-process hook]
      -> parser (prompt editing, alternation, AND, BREAK: a schedule of texts per step)
      -> text_encoding (emphasis, 77-token chunks, text encoders) -> conditioning (per-step dicts)
"""
