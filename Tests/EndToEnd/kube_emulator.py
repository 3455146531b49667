#!/usr/bin/env python3
"""A Kubernetes API server EMULATOR for Sluice's Kubernetes-source tests: no real
kube-apiserver can run on these machines, so this serves the PyPI package `kmock`'s
`KubernetesEmulator` (an in-memory store with list, ?watch=true streaming
ADDED/MODIFIED/DELETED, create, merge-patch and delete) on 127.0.0.1:PORT.

What this script adds to kmock, and why (kmock 0.8 has no real resourceVersion, it
answers every list with the literal "..." and ignores ?resourceVersion on watches):
  * Lists carry a resourceVersion naming this run of the emulator ("<incarnation>.<n>").
  * A watch from a resourceVersion of another run is answered the way a real API
    server answers a version it no longer has (etcd compaction): HTTP 200, then one
    ERROR event with a Status of code 410 (reason Expired). A client must relist.
  * --state FILE: the objects are read from FILE at start and written to it at exit
    (SIGTERM/SIGINT), so a stopped and restarted emulator serves what it served
    before (plus whatever the test changed in FILE in between).
  * Watches subscribe to changes before they take the snapshot they start with (kmock 0.8
    subscribes after sending it, so a change in between was lost).
  * Namespaced kinds are declared so that an empty list is an empty list, not 404.
  * kmock 0.8 reads `/api/v1/namespaces` and `/api/v1/namespaces/NAME` as the start of a
    namespaced path and fails (HTTP 500, "not enough values to unpack"): Namespace objects
    could not be listed, watched, created or fetched. `parse_path` is wrapped so that those
    two shapes mean the Namespace resource, as they do on a real API server.
  * List answers carry `kind: <Kind>List` and `apiVersion` (kubectl refuses lists without).
  * kmock 0.8 answers errors with reasons of its own ("Object Not Found"); kubectl 1.20
    (Debian's) recognises a missing object only by Kubernetes' reason "NotFound" (and
    "AlreadyExists" for 409), so `kubectl apply` of a new object failed. Those two are
    answered with the Kubernetes reasons.
  * kmock 0.8 sends watch streams as application/octet-stream; kubectl (`delete` waits for
    the deletion with a watch) has no decoder for that. Streams are sent as
    application/json, as a real API server sends them.
  * kmock 0.8 names the core group's version "/v1" in discovery (`groupVersion` of
    /api/v1); kubectl then finds no Pod, Namespace or Node kind. It is answered as "v1".

Run: kube_emulator.py --port P [--state FILE]; prints "ready P" when serving.
"""
import argparse
import asyncio
import json
import os
import signal
import sys
import uuid

import aiohttp.web
import kmock
from kmock._internal import parsing, rendering

_parse_path = parsing.parse_path


def parse_path(path):
    parts = path.strip('/').split('/')
    if parts[:3] == ['api', 'v1', 'namespaces'] and len(parts) <= 4:
        return parsing.ParsedPath('', 'v1', 'namespaces', None, parts[3] if len(parts) == 4 else None, None)
    return _parse_path(path)


parsing.parse_path = parse_path

_apply_metadata = rendering.Response._Response__apply_metadata


def apply_metadata(self, raw_response):
    _apply_metadata(self, raw_response)
    if type(raw_response) is aiohttp.web.StreamResponse and not self.headers:
        raw_response.content_type = 'application/json'


rendering.Response._Response__apply_metadata = apply_metadata

RESOURCES = {
    # plural path: (group, version, kind, namespaced)
    'pods': ('', 'v1', 'Pod', True),
    'namespaces': ('', 'v1', 'Namespace', False),
    'nodes': ('', 'v1', 'Node', False),
    'networkpolicies': ('networking.k8s.io', 'v1', 'NetworkPolicy', True),
    'ciliumnetworkpolicies': ('cilium.io', 'v2', 'CiliumNetworkPolicy', True),
    'ciliumclusterwidenetworkpolicies': ('cilium.io', 'v2', 'CiliumClusterwideNetworkPolicy', False),
}


class Emulator(kmock.KubernetesEmulator):
    incarnation: str = ''

    async def _serve_list(self, request):
        listed = await super()._serve_list(request)
        listed['metadata'] = {'resourceVersion': f'{self.incarnation}.{len(self.objects)}'}
        resource = request.resource
        if resource is not None and resource.plural in RESOURCES:
            group, version, kind, _ = RESOURCES[resource.plural]
            listed['kind'] = kind + 'List'
            listed['apiVersion'] = f'{group}/{version}' if group else version
        return listed

    async def _render_error(self, exc):
        if isinstance(exc, kmock.KubernetesError) and exc.status in (404, 409):
            return aiohttp.web.json_response({
                'apiVersion': 'v1', 'kind': 'Status', 'metadata': {}, 'status': 'Failure', 'code': exc.status,
                'reason': 'NotFound' if exc.status == 404 else 'AlreadyExists',
                'message': exc.message or 'not found', 'details': {}}, status=exc.status)
        return await super()._render_error(exc)

    async def _serve_version(self, request):
        answer = await super()._serve_version(request)
        if answer.get('groupVersion', '').startswith('/'):
            answer['groupVersion'] = answer['groupVersion'][1:]
        return answer

    async def _serve_watch(self, request):
        version = request.params.get('resourceVersion', '')
        if version not in ('', '0') and not version.startswith(self.incarnation + '.'):
            yield b''
            yield {'type': 'ERROR', 'object': {
                'kind': 'Status', 'apiVersion': 'v1', 'status': 'Failure', 'reason': 'Expired', 'code': 410,
                'message': f'too old resource version: {version}'}}
            return
        # kmock 0.8 takes the objects' snapshot, sends it, and only then subscribes to the
        # event bus: an object created in between was never sent (seen as a lost ADDED event
        # now and then). Here the bus position is marked under the same lock as the
        # snapshot, so every change after the snapshot is streamed.
        yield b''
        bus = self._buses[request.resource]
        async with self._lock:
            marker = await bus.mark()
            events = [{'type': 'ADDED', 'object': obj.raw} for (resource, namespace, name), obj in self.objects.items()
                      if self.__wanted(request, resource, namespace, name) and not obj.deleted]
        try:
            for event in events:
                yield event
            async for event in bus.stream(since=marker):
                metadata = event.get('object', {}).get('metadata', {})
                if self.__wanted(request, request.resource, metadata.get('namespace'), metadata.get('name')):
                    yield event
        finally:
            await bus.unmark(marker)

    @staticmethod
    def __wanted(request, resource, namespace, name):
        return (resource == request.resource and (request.namespace is None or namespace == request.namespace)
                and (request.name is None or name == request.name))


def resource_key(plural):
    group, version, _, _ = RESOURCES[plural]
    return kmock.resource(group, version, plural)


async def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--state', help='JSON file: {plural: [objects]}, read at start, written at exit')
    arguments = parser.parse_args()

    emulator = Emulator()
    emulator.incarnation = uuid.uuid4().hex[:8]
    for plural, (group, version, kind, namespaced) in RESOURCES.items():
        emulator.resources[resource_key(plural)] = kmock.ResourceInfo(
            kind=kind, singular=kind.lower(), namespaced=namespaced, verbs={'get', 'list', 'watch', 'create', 'patch', 'delete', 'update'})
    if arguments.state and os.path.exists(arguments.state):
        with open(arguments.state) as file:
            stored = json.load(file)
        for plural, objects in stored.items():
            for obj in objects:
                metadata = obj.get('metadata', {})
                emulator.objects[resource_key(plural), metadata.get('namespace'), metadata['name']] = obj

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    async with emulator, kmock.Server(emulator, port=arguments.port):
        print(f'ready {arguments.port}', flush=True)
        await stop.wait()
        if arguments.state:
            stored = {plural: [] for plural in RESOURCES}
            for (resource, _, _), obj in emulator.objects.items():
                if not obj.deleted and resource.plural in stored:
                    stored[resource.plural].append(obj.raw)
            with open(arguments.state + '.tmp', 'w') as file:
                json.dump(stored, file)
            os.replace(arguments.state + '.tmp', arguments.state)
        # aiohttp would wait for the open watch streams to finish, which they never do: go
        # now, dropping every connection, as an API server that stops does.
        sys.stdout.flush()
        os._exit(0)


if __name__ == '__main__':
    asyncio.run(main())
    sys.exit(0)
