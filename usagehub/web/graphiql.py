"""GraphiQL served by the hub itself: the page opens without a key, assets come from the package (no CDN).

The key is pasted into the page's key field, or taken from the URL fragment
(``/graphql#key=uh_…``, which the browser never sends to a server); every
query then carries ``Authorization: Bearer <key>``. Subscriptions run over
graphql-transport-ws on the same path (the graphql-ws client bundled in
graphiql.min.js); as a browser cannot set WebSocket headers, the key travels
in the ``connection_init`` payload (``web/app.py`` checks it there).
"""

from __future__ import annotations

from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

ASSETS = Path(__file__).resolve().parent / "static" / "graphiql"
STATIC_PREFIX = "/graphiql/static"

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>usagehub GraphiQL</title>
<link rel="stylesheet" href="{static}/graphiql.min.css">
<style>
  html, body {{ height: 100%; margin: 0; font-family: system-ui, sans-serif; }}
  body {{ display: flex; flex-direction: column; }}
  #keybar {{ display: flex; gap: .5em; align-items: center; padding: .4em .8em; background: #f3f4f6;
             border-bottom: 1px solid #d1d5db; font-size: 14px; }}
  #keybar input {{ flex: 1; max-width: 36em; font-family: monospace; padding: .25em .4em; }}
  #keystate.missing {{ color: #b91c1c; font-weight: 600; }}
  #keystate.set {{ color: #166534; }}
  #graphiql {{ flex: 1; min-height: 0; }}
</style>
</head>
<body>
<div id="keybar">
  <label for="apikey">API key</label>
  <input id="apikey" type="password" autocomplete="off" placeholder="uh_… (usagehub keys create --role admin)">
  <button id="usekey" type="button">Use key</button>
  <span id="keystate" class="missing">no key: paste one to run queries</span>
</div>
<div id="graphiql"></div>
<script src="{static}/react.production.min.js"></script>
<script src="{static}/react-dom.production.min.js"></script>
<script src="{static}/graphiql.min.js"></script>
<script>
(function () {{
  var key = "";
  var fromFragment = new URLSearchParams(window.location.hash.slice(1)).get("key");
  var input = document.getElementById("apikey"), state = document.getElementById("keystate");
  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  var wsUrl = (window.location.protocol === "https:" ? "wss://" : "ws://") + window.location.host + "{endpoint}";
  var socketFetcher = null;  // graphql-transport-ws (graphql-ws, bundled in graphiql.min.js); made per key
  // Which operation runs, read from the text itself (GraphiQL's parsed documentAST can lag behind typing).
  function operations(query) {{
    var text = query.replace(/"{{3}}[\\s\\S]*?"{{3}}|"(?:\\\\.|[^"\\\\\\n])*"|#[^\\n]*/g, " ");
    var ops = [], depth = 0, parens = 0, head = null, re = /[{{}}()]|[_A-Za-z][_0-9A-Za-z]*/g, m;
    while ((m = re.exec(text)) !== null) {{
      var t = m[0];
      if (t === "(") parens++;
      else if (t === ")") parens--;
      else if (parens > 0) continue;
      else if (t === "{{") {{ if (depth++ === 0) {{ ops.push(head || {{kind: "query", name: null}}); head = null; }} }}
      else if (t === "}}") depth--;
      else if (depth === 0) {{
        if (head === null) head = {{kind: t, name: null}};
        else if (head.name === null) head.name = t;
      }}
    }}
    return ops.filter(function (o) {{ return o.kind !== "fragment"; }});
  }}
  function isSubscription(params) {{
    var ops = operations(params.query || "");
    var op = ops.length === 1 ? ops[0] : ops.filter(function (o) {{ return o.name === params.operationName; }})[0];
    return !!op && op.kind === "subscription";
  }}
  function fetcher(params, opts) {{
    if (isSubscription(params)) {{
      // A browser cannot send headers on a WebSocket: the key goes in the connection_init payload.
      socketFetcher = socketFetcher || GraphiQL.createFetcher({{url: "{endpoint}", subscriptionUrl: wsUrl,
        wsConnectionParams: {{Authorization: "Bearer " + key}}}});
      // The toolkit routes by opts.documentAST, which may lag behind the editor: hand it the verdict.
      var name = params.operationName ? {{kind: "Name", value: params.operationName}} : undefined;
      var verdict = {{kind: "Document", definitions: [{{kind: "OperationDefinition", operation: "subscription",
                                                       name: name}}]}};
      return socketFetcher(params, Object.assign({{}}, opts, {{documentAST: verdict}}));
    }}
    var headers = {{"Content-Type": "application/json", "Accept": "application/json"}};
    if (key) headers["Authorization"] = "Bearer " + key;
    return fetch("{endpoint}", {{method: "POST", headers: headers, body: JSON.stringify(params)}})
      .then(function (r) {{
        return r.text().then(function (text) {{
          try {{ return JSON.parse(text); }}
          catch (e) {{ return {{errors: [{{message: r.status + " " + text}}]}}; }}
        }});
      }});
  }}
  function render() {{
    state.textContent = key ? "key set" : "no key: paste one to run queries";
    state.className = key ? "set" : "missing";
    // A new key re-creates the editor so the schema is fetched again with it.
    root.render(React.createElement(GraphiQL, {{fetcher: fetcher, key: key || "nokey",
      defaultQuery: "# Paste an API key above (or open /graphql#key=<key>), then run a query, e.g.\\n" +
                    "{{ ingestStats {{ messages accepted duplicates quarantined }} }}\\n"}}));
  }}
  function useKey() {{ key = input.value.trim(); socketFetcher = null; render(); }}
  document.getElementById("usekey").addEventListener("click", useKey);
  input.addEventListener("keydown", function (e) {{ if (e.key === "Enter") useKey(); }});
  if (fromFragment) {{ input.value = fromFragment; key = fromFragment; }}
  render();
}})();
</script>
</body>
</html>
"""


def page(endpoint: str = "/graphql") -> str:
    """The GraphiQL page for ``endpoint``."""
    return PAGE.format(static=STATIC_PREFIX, endpoint=endpoint)


def _wants_page(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["method"] != "GET" or scope.get("query_string"):
        return False
    return "text/html" in Headers(scope=scope).get("accept", "")


class WithGraphiQL:
    """An ASGI app: a browser's plain GET gets the GraphiQL page (no key needed), the rest goes to GraphQL."""

    def __init__(self, graphql: ASGIApp, endpoint: str = "/graphql") -> None:
        self.graphql = graphql
        self.html = page(endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the page or hand over to GraphQL."""
        if _wants_page(scope):
            await HTMLResponse(self.html)(scope, receive, send)
        else:
            await self.graphql(scope, receive, send)


def graphiql_routes() -> list[BaseRoute]:
    """The vendored GraphiQL assets (see ``scripts/vendor-graphiql``)."""
    return [Mount(STATIC_PREFIX, app=StaticFiles(directory=ASSETS), name="graphiql-static")]
