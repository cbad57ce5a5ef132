;;; Read a package definition written by `reweigh export guix` with Guile's own reader
;;; and print what the tests check, one fact a line (tab-separated):
;;;   form KIND NAME             each top-level form (define NAME, package, use-modules)
;;;   origin LIST PLACE URI B32  each origin of %recipe-files and %sources
;;;   field NAME VALUE           the package's name, version, home-page
;;;   license SYMBOL-or-(...)    each licence of the package
;;;   phase VERB NAME            each phase the package deletes, replaces or adds
;;;   invoke ARGS...             the command line of the build phase
;;;   exists PATH                the item folder the derivation check looks for
;;;   input NAME                 each native input named by specification
;;; Guix's #~ and #$ are read as (gexp ...) and (ungexp ...), as (guix gexp) reads them.

(use-modules (ice-9 match))

(read-hash-extend #\~ (lambda (chr port) (list 'gexp (read port))))
(read-hash-extend #\$ (lambda (chr port)
                        (if (eqv? (peek-char port) #\@)
                            (begin (read-char port) (list 'ungexp-splicing (read port)))
                            (list 'ungexp (read port)))))

(define (say . words)
  (display (string-join (map (lambda (w) (if (string? w) w (object->string w))) words) "\t"))
  (newline))

(define (origins list-name entries)
  (for-each
   (match-lambda
     ((place ('unquote ('origin ('method 'url-fetch) ('uri uri) ('file-name _)
                                ('sha256 ('base32 hash)))))
      (say "origin" list-name place uri hash))
     (other (say "malformed" list-name other)))
   entries))

(define (walk tree)
  ;; the phases, the build's command line and the derivation check, wherever they are
  (match tree
    (('delete ('quote name)) (say "phase" "delete" name))
    (('replace ('quote name) body) (say "phase" "replace" name) (walk body))
    (('add-after ('quote after) ('quote name) body) (say "phase" "add" name) (walk body))
    (('invoke . args) (apply say "invoke" args))
    (('file-exists? path) (say "exists" path))
    ((items ...) (for-each walk items))
    (_ #f)))

(define (package-fields fields)
  (for-each
   (match-lambda
     (((and key (or 'name 'version 'home-page)) value) (say "field" key value))
     (('license ('list licences ...)) (for-each (lambda (l) (say "license" l)) licences))
     (('native-inputs ('cons input ('map 'specification->package ('quote names))))
      (say "input" input)
      (for-each (lambda (n) (say "input" n)) names))
     (('arguments args) (walk args))
     (_ #f))
   fields))

(define (top form)
  (match form
    (('use-modules . modules) (say "form" "use-modules" (length modules)))
    (('define name ('quasiquote entries)) (say "form" "define" name) (origins name entries))
    (('define name ('quote ())) (say "form" "define" name))
    (('define name . _) (say "form" "define" name))
    (('package . fields) (say "form" "package" "") (package-fields fields))
    (_ (say "form" "other" ""))))

(call-with-input-file (cadr (command-line))
  (lambda (port)
    (let loop ((form (read port)))
      (unless (eof-object? form)
        (top form)
        (loop (read port))))))
