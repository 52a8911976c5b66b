"""A TCP proxy, one process per route: ``python tcp_proxy.py LISTEN_PORT TARGET_PORT``.

The HA tests put one in front of each PostgreSQL instance (and of etcd for each Patroni)
and cut a node off the network by killing its proxies: its port is closed and every
connection through it ends at once, as when a host drops off the network.
"""

import asyncio
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _serve(listen_port: int, target_port: int) -> None:
    async def route(client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        try:
            server_reader, server = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client.close()
            return
        await asyncio.gather(_pipe(client_reader, server), _pipe(server_reader, client))

    server = await asyncio.start_server(route, "127.0.0.1", listen_port, reuse_address=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), int(sys.argv[2])))
