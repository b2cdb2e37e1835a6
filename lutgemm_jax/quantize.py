"""BCQ quantizers (placeholder during bring-up; replaced by the quantizer module)."""
