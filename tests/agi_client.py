"""A FastAGI client that speaks the AGI wire protocol line by line, as Asterisk does."""

import socket
from dataclasses import dataclass, field

from tests.channel_support import MSISDN


@dataclass
class FakeAsterisk:
    """One call as Asterisk places it over FastAGI."""

    port: int
    keys: dict[str, list[str]] = field(default_factory=dict)  # prompt → digits per GET DATA
    callerid: str = MSISDN
    language: str = "en"  # the channel's language, as CHANNEL(language) sets it
    missing: set[str] = field(default_factory=set)  # sound files Asterisk cannot open
    hangup_at: str | None = None  # the caller hangs up during this GET DATA
    hangup_first: bool = False  # HANGUP arrives before the command's reply
    commands: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    dead: bool = False

    def environment(self) -> str:
        env = {
            "agi_network": "yes",
            "agi_network_script": "recharge",
            "agi_request": f"agi://127.0.0.1:{self.port}/recharge",
            "agi_channel": "PJSIP/trunk-00000001",
            "agi_language": self.language,
            "agi_type": "PJSIP",
            "agi_uniqueid": "1764000000.17",
            "agi_version": "20.5.0",
            "agi_callerid": self.callerid,
            "agi_calleridname": "unknown",
            "agi_callingpres": "0",
            "agi_dnid": "100",
            "agi_rdnis": "unknown",
            "agi_context": "recharge",
            "agi_extension": "100",
            "agi_priority": "2",
            "agi_enhanced": "0.0",
            "agi_accountcode": "",
            "agi_threadid": "140245123456",
        }
        return "".join(f"{k}: {v}\n" for k, v in env.items()) + "\n"

    def reply(self, command: str) -> str:
        if self.dead:
            return "511 Command Not Permitted on a dead channel or intercept routine\n"
        words = command.split(" ")
        verb = " ".join(words[:2])
        if command == "ANSWER":
            return "200 result=0\n"
        if verb == "GET DATA":
            if words[2] == self.hangup_at:
                self.dead = True
                return "HANGUP\n200 result=-1\n" if self.hangup_first else "200 result=-1\nHANGUP\n"
            digits = self.keys[words[2]].pop(0)
            return f"200 result={digits}\n" if digits else "200 result= (timeout)\n"
        if verb == "STREAM FILE":
            return (
                "200 result=-1 endpos=0\n"
                if words[2] in self.missing
                else "200 result=0 endpos=16000\n"
            )
        if verb in ("SAY NUMBER", "SAY DIGITS"):
            return "200 result=0\n"
        if verb == "SET VARIABLE":
            self.variables[words[2]] = " ".join(words[3:]).strip('"')
            return "200 result=1\n"
        return "510 Invalid or unknown command\n"

    def call(self) -> list[str]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=15) as sock:
            stream = sock.makefile("rwb")
            stream.write(self.environment().encode())
            stream.flush()
            while line := stream.readline():
                command = line.decode().rstrip("\n")
                self.commands.append(command)
                stream.write(self.reply(command).encode())
                stream.flush()
            stream.close()
        return self.commands

    def played(self) -> list[str]:
        return [c.split(" ")[2] for c in self.commands if c.startswith(("STREAM FILE", "GET DATA"))]

    def said(self) -> list[str]:
        """What the caller heard, in order: sound files, and numbers as ``#<n>``."""
        heard = []
        for command in self.commands:
            words = command.split(" ")
            if command.startswith(("STREAM FILE", "GET DATA")):
                heard.append(words[2])
            elif command.startswith("SAY NUMBER"):
                heard.append(f"#{words[2]}")
        return heard
