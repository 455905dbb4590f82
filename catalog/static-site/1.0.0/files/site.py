"""A static web site: writes its page from the environment, then serves the folder with
Python's built-in http.server. Values arrive as environment variables (data, never code)."""
import html
import http.server
import os
import tempfile

root = tempfile.mkdtemp(prefix="site-")
title = html.escape(os.environ.get("SITE_TITLE", "Walle"))
text = html.escape(os.environ.get("SITE_MESSAGE", ""))
with open(os.path.join(root, "index.html"), "w", encoding="utf-8") as page:
    page.write(f"<!doctype html><html lang=en><meta charset=utf-8><title>{title}</title>"
               f"<h1>{title}</h1><p>{text}</p></html>\n")
handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=root, **kw)  # noqa: E731
http.server.ThreadingHTTPServer(("", int(os.environ["SITE_PORT"])), handler).serve_forever()
