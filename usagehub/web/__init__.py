"""The web pages and HTTP routes of the hub around /graphql: ASGI app, exports, analytics page."""
