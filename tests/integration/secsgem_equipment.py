"""An AOI modelled with secsgem 0.3.0 (an independent SECS/GEM implementation) as a passive equipment.

Run in its own process (secsgem uses threads): `python secsgem_equipment.py PORT`. It prints
`listening` once its HSMS server is enabled, then reads commands from stdin, one per line, and answers
`ok` (or `error <text>`) on stdout:

    board <serial> <result> <defect_count>   set the data values of the next board
    event                                    trigger collection event board_inspected (S6F11)
    alarm_set <alid> / alarm_clear <alid>    S5F1 (sent only if the host enabled the alarm)
    sv <svid> <int>                          set a status variable
    quit

Model: status variables 2101 process_state (U4) and 2102 inspected_boards (U4, unit "boards");
data values 2001 board_serial (A), 2002 result (A), 2003 defect_count (U4); collection event 3001
board_inspected; alarm 7001 "conveyor jam" (category 5). SVIDs 1001-1005 are secsgem's own.
"""

from __future__ import annotations

import logging
import sys

import secsgem.common
import secsgem.gem
import secsgem.hsms
import secsgem.secs

SV_PROCESS_STATE, SV_INSPECTED = 2101, 2102
DV_SERIAL, DV_RESULT, DV_DEFECTS = 2001, 2002, 2003
CE_BOARD_INSPECTED = 3001
ALID_CONVEYOR = 7001
CE_ALARM_ON, CE_ALARM_OFF = 3101, 3102

V = secsgem.secs.variables


class AoiEquipment(secsgem.gem.GemEquipmentHandler):  # type: ignore[misc]
    def __init__(self, port: int) -> None:
        settings = secsgem.hsms.HsmsSettings(
            address="127.0.0.1",
            port=port,
            connect_mode=secsgem.hsms.HsmsConnectMode.PASSIVE,
            device_type=secsgem.common.DeviceType.EQUIPMENT,
            session_id=0,
            t3=5.0,
        )
        super().__init__(settings)
        self.status_variables.update({
            SV_PROCESS_STATE: secsgem.gem.StatusVariable(SV_PROCESS_STATE, "ProcessState", "", V.U4, False),
            SV_INSPECTED: secsgem.gem.StatusVariable(SV_INSPECTED, "InspectedBoards", "boards", V.U4, False),
        })
        self.status_variables[SV_PROCESS_STATE].value = 2
        self.status_variables[SV_INSPECTED].value = 0
        self.data_values.update({
            DV_SERIAL: secsgem.gem.DataValue(DV_SERIAL, "board_serial", V.String, False),
            DV_RESULT: secsgem.gem.DataValue(DV_RESULT, "result", V.String, False),
            DV_DEFECTS: secsgem.gem.DataValue(DV_DEFECTS, "defect_count", V.U4, False),
        })
        self.data_values[DV_SERIAL].value = "NONE"
        self.data_values[DV_RESULT].value = "NONE"
        self.data_values[DV_DEFECTS].value = 0
        self.collection_events.update({
            CE_BOARD_INSPECTED: secsgem.gem.CollectionEvent(
                CE_BOARD_INSPECTED, "BoardInspected", [DV_SERIAL, DV_RESULT, DV_DEFECTS]),
            CE_ALARM_ON: secsgem.gem.CollectionEvent(CE_ALARM_ON, "ConveyorJamSet", []),
            CE_ALARM_OFF: secsgem.gem.CollectionEvent(CE_ALARM_OFF, "ConveyorJamCleared", []),
        })
        self.alarms.update({
            ALID_CONVEYOR: secsgem.gem.Alarm(
                ALID_CONVEYOR, "ConveyorJam", "conveyor jam", 5, CE_ALARM_ON, CE_ALARM_OFF),
        })


def handle(eq: AoiEquipment, words: list[str]) -> None:
    command, args = words[0], words[1:]
    if command == "board":
        eq.data_values[DV_SERIAL].value = args[0]
        eq.data_values[DV_RESULT].value = args[1]
        eq.data_values[DV_DEFECTS].value = int(args[2])
        eq.status_variables[SV_INSPECTED].value += 1
    elif command == "event":
        eq.trigger_collection_events([CE_BOARD_INSPECTED])
    elif command == "alarm_set":
        eq.set_alarm(int(args[0]))
    elif command == "alarm_clear":
        eq.clear_alarm(int(args[0]))
    elif command == "sv":
        eq.status_variables[int(args[0])].value = int(args[1])
    else:
        raise ValueError(f"unknown command {command!r}")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    eq = AoiEquipment(int(argv[0]))
    eq.enable()
    print("listening", flush=True)
    try:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "quit":
                break
            try:
                handle(eq, words)
            except Exception as exc:  # report to the test instead of dying
                print(f"error {exc!r}", flush=True)
                continue
            print("ok", flush=True)
    finally:
        eq.disable()
    return 0




if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
