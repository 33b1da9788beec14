"""Pure domain logic: no sockets, no SQL, no asyncio, no clock reads. Time is passed in."""
